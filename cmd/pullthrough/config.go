package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pullthrough/pullthrough/cache"
)

var formats = []string{"talosctl-docker", "talosctl-qemu", "talos-patch", "containerd", "k3s", "kind", "docker"}

// mirror is one running cache as a client reaches it.
type mirror struct {
	host     string // registry host, e.g. docker.io
	endpoint string // http://172.17.0.1:5000
	origin   string // the registry itself, for containerd's server line
}

func newConfig() *cobra.Command {
	var f cacheFlags
	var format, bridge, cidr, dir string
	var skipFallback bool
	cmd := &cobra.Command{
		Use:   "config --format " + strings.Join(formats, "|"),
		Short: "Print the running caches as config for talosctl, Talos, containerd, k3s, kind or Docker",
		Long: `config finds the caches running on this host (pullthrough up on any ports, up --detach
under any --name, a test's cachetest caches) and prints them in the format asked. Every
cache port serves every registry of its set (containerd's ?ns=), so a "*" (default) entry
sends registries without one of their own to the first cache, which fetches those it caches
and refuses the others (the client then falls back to the registry itself):

  talosctl-docker  the talosctl cluster create docker line (docker0's address)
  talosctl-qemu    the talosctl cluster create qemu line (the gateway of --cidr)
  talos-patch      RegistryMirrorConfig documents for --config-patch; --skip-fallback keeps a
                   node's containerd from pulling from the registry itself when a cache fails,
                   which a strict-mode verification needs
  containerd       certs.d/<host>/hosts.toml files (printed, or written under --dir), and
                   _default/hosts.toml: every other registry through the first cache
  k3s              /etc/rancher/k3s/registries.yaml, with a "*" entry for every other registry
  kind             a kind Cluster whose containerd reads certs.d (config_path) from --dir,
                   mounted into each node; the hosts.toml files are written there
  docker           daemon.json: Docker uses mirrors for docker.io only`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format == "" {
				return usagef("--format is required: want one of %s, such as --format talos-patch", strings.Join(formats, ", "))
			}
			if !contains(formats, format) {
				return usagef("--format %q: want one of %s", format, strings.Join(formats, ", "))
			}
			if skipFallback && format != "talos-patch" && format != "containerd" {
				return usagef("--skip-fallback means nothing for --format %s: it is for talos-patch and containerd only", format)
			}
			if format == "kind" && dir == "" {
				return usagef("--format kind needs --dir DIR: kind's nodes read mirrors from certs.d hosts.toml files, which pullthrough writes under DIR for the kind config to mount")
			}
			if dir != "" && format != "containerd" && format != "kind" {
				return usagef("--dir is for --format containerd and kind only")
			}
			addr := bridge
			var err error
			switch {
			case format == "talosctl-qemu":
				gw, err := cache.GatewayIP(cidr)
				if err != nil {
					return usagef("--cidr %q: %v", cidr, err)
				}
				if addr == "" {
					addr = gw
				}
			case addr == "":
				var why string
				if addr, why = dockerNodeAddr(cmd.Context()); addr == "" {
					return errors.New(why)
				}
			}
			if net.ParseIP(addr) == nil {
				return usagef("--bridge %q: want an IP address", addr)
			}
			found, err := findRunning(cmd, &f)
			if err != nil {
				return err
			}
			if len(found) == 0 {
				return errors.New(notRunning(cmd, &f))
			}
			var ms []mirror
			var unreachable []string
			seen := map[string]bool{}
			for _, r := range found {
				if seen[r.Host] {
					continue // a second set for the same registry: the first found serves
				}
				if len(r.Listen) > 0 && !slices.Contains(r.Listen, "0.0.0.0") && !slices.Contains(r.Listen, addr) {
					unreachable = append(unreachable, r.Addr)
					continue
				}
				seen[r.Host] = true
				ms = append(ms, mirror{host: r.Host, endpoint: "http://" + net.JoinHostPort(addr, strconv.Itoa(r.Port)), origin: r.URL})
			}
			if len(ms) == 0 {
				return fmt.Errorf("the running caches (%s) do not listen on %s, so nothing there reaches them (started with --loopback-only?); start them without it, or name an address they listen on with --bridge",
					strings.Join(unreachable, ", "), addr)
			}
			return writeConfig(cmd.OutOrStdout(), cmd.ErrOrStderr(), format, ms, cidr, dir, skipFallback)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&format, "format", "", "one of "+strings.Join(formats, ", "))
	cmd.Flags().StringVar(&bridge, "bridge", "", "address clients reach the caches at (default: docker0's, or the gateway of --cidr for talosctl-qemu)")
	cmd.Flags().StringVar(&cidr, "cidr", "10.5.0.0/24", "the qemu provisioner's network")
	cmd.Flags().StringVar(&dir, "dir", "", "containerd, kind: write certs.d/HOST/hosts.toml files under this directory (containerd: instead of printing them)")
	cmd.Flags().BoolVar(&skipFallback, "skip-fallback", false, "talos-patch, containerd: never fall back to the registry itself")
	return cmd
}

// defaultMirror is the "*" entry: every port routes by containerd's ?ns=,
// so the first cache serves every registry of its set. It never sets
// skipFallback: a registry the set does not cache is refused there, and the
// client must then go to the registry itself.
func defaultMirror(ms []mirror) mirror { return mirror{host: "*", endpoint: ms[0].endpoint} }

func writeConfig(w, warn io.Writer, format string, ms []mirror, cidr, dir string, skipFallback bool) error {
	switch format {
	case "talosctl-docker", "talosctl-qemu":
		var flags []string
		for _, m := range ms {
			flags = append(flags, "--registry-mirror "+m.host+"="+m.endpoint)
		}
		if format == "talosctl-docker" {
			printTalosctlLines(w, "docker", "", flags)
		} else {
			printTalosctlLines(w, "qemu", cidr, flags)
		}
	case "talos-patch":
		for _, m := range ms {
			fmt.Fprintf(w, "apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: %s\nendpoints:\n  - url: %s\n", m.host, m.endpoint)
			if skipFallback {
				fmt.Fprintln(w, "skipFallback: true")
			}
			fmt.Fprintln(w, "---")
		}
		d := defaultMirror(ms)
		fmt.Fprintf(w, "apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: \"*\"\nendpoints:\n  - url: %s\n", d.endpoint)
	case "containerd":
		return writeCertsD(w, ms, dir, skipFallback)
	case "k3s":
		fmt.Fprintln(w, "mirrors:")
		for _, m := range append(ms, defaultMirror(ms)) {
			fmt.Fprintf(w, "  %q:\n    endpoint:\n      - %q\n", m.host, m.endpoint)
		}
	case "kind":
		// kind's documented form since containerd 1.5: the CRI plugin reads
		// certs.d, here mounted from dir, instead of the deprecated
		// registry.mirrors table.
		if err := writeCertsD(warn, ms, dir, false); err != nil {
			return err
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, `kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
  - |-
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
nodes:
  - role: control-plane
    extraMounts:
      - hostPath: %s
        containerPath: /etc/containerd/certs.d
        readOnly: true
`, abs)
	case "docker":
		var endpoint string
		for _, m := range ms {
			if m.host == "docker.io" {
				endpoint = m.endpoint
			}
		}
		if endpoint == "" {
			return fmt.Errorf("no cache for docker.io is running: Docker uses registry mirrors for docker.io only")
		}
		fmt.Fprintln(warn, "# Docker's daemon uses registry-mirrors for docker.io only; other registries are pulled directly.")
		hostPort := strings.TrimPrefix(endpoint, "http://")
		b, _ := json.MarshalIndent(map[string][]string{"registry-mirrors": {endpoint}, "insecure-registries": {hostPort}}, "", "  ")
		fmt.Fprintln(w, string(b))
	}
	return nil
}

// writeCertsD prints containerd's certs.d/<host>/hosts.toml files, and
// _default/hosts.toml, or writes them under dir and names each.
func writeCertsD(w io.Writer, ms []mirror, dir string, skipFallback bool) error {
	for _, m := range append(ms, defaultMirror(ms)) {
		var b strings.Builder
		host := m.host
		if host == "*" {
			// The default host keeps each registry as its server: containerd
			// falls back to it for what the caches refuse.
			host = "_default"
		} else {
			server := m.origin
			if m.host == "docker.io" {
				server = "https://registry-1.docker.io"
			}
			if skipFallback || server == "" {
				// With no fallback, the mirror is the only host.
				server = m.endpoint
			}
			fmt.Fprintf(&b, "server = %q\n\n", server)
		}
		fmt.Fprintf(&b, "[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", m.endpoint)
		if dir == "" {
			fmt.Fprintf(w, "# %s\n%s\n", filepath.Join("certs.d", host, "hosts.toml"), b.String())
			continue
		}
		p := filepath.Join(dir, host, "hosts.toml")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
		if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
		fmt.Fprintln(w, p)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func portList(ups []cache.Upstream) string {
	var ps []int
	for _, u := range ups {
		ps = append(ps, u.Port)
	}
	sort.Ints(ps)
	var s []string
	for _, p := range ps {
		s = append(s, strconv.Itoa(p))
	}
	return strings.Join(s, ", ")
}
