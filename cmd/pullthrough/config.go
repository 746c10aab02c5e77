package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
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
		Long: `config finds the caches running on this host (pullthrough up, or a test's cachetest.Main
with fixed ports) and prints them in the format asked:

  talosctl-docker  the talosctl cluster create docker line (docker0's address)
  talosctl-qemu    the talosctl cluster create qemu line (the gateway of --cidr)
  talos-patch      RegistryMirrorConfig documents for --config-patch; --skip-fallback keeps a
                   node's containerd from pulling from the registry itself when a cache fails,
                   which a strict-mode verification needs
  containerd       certs.d/<host>/hosts.toml files (printed, or written under --dir)
  k3s              /etc/rancher/k3s/registries.yaml
  kind             a kind Cluster with containerdConfigPatches
  docker           daemon.json: Docker uses mirrors for docker.io only`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !contains(formats, format) {
				return usagef("--format %q: want one of %s", format, strings.Join(formats, ", "))
			}
			ups, err := f.list()
			if err != nil {
				return err
			}
			found := discover(cmd.Context(), ups)
			if len(found) == 0 {
				return fmt.Errorf("no pullthrough cache answers on 127.0.0.1 ports %s: start them with `pullthrough up`", portList(ups))
			}
			addr := bridge
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
				if addr, err = cache.DockerBridgeIP(); err != nil {
					return fmt.Errorf("%w: name the address clients reach this host at with --bridge", err)
				}
			}
			if net.ParseIP(addr) == nil {
				return usagef("--bridge %q: want an IP address", addr)
			}
			var ms []mirror
			for _, r := range found {
				origin := ""
				for _, u := range ups {
					if u.Host == r.Host {
						origin = u.URL
					}
				}
				ms = append(ms, mirror{host: r.Host, endpoint: "http://" + net.JoinHostPort(addr, strconv.Itoa(r.Port)), origin: origin})
			}
			return writeConfig(cmd.OutOrStdout(), cmd.ErrOrStderr(), format, ms, cidr, dir, skipFallback)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&format, "format", "", "one of "+strings.Join(formats, ", "))
	cmd.Flags().StringVar(&bridge, "bridge", "", "address clients reach the caches at (default: docker0's, or the gateway of --cidr for talosctl-qemu)")
	cmd.Flags().StringVar(&cidr, "cidr", "10.5.0.0/24", "the qemu provisioner's network")
	cmd.Flags().StringVar(&dir, "dir", "", "containerd: write certs.d/<host>/hosts.toml under this directory instead of printing")
	cmd.Flags().BoolVar(&skipFallback, "skip-fallback", false, "talos-patch, containerd: never fall back to the registry itself")
	_ = cmd.MarkFlagRequired("format")
	return cmd
}

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
		for i, m := range ms {
			if i > 0 {
				fmt.Fprintln(w, "---")
			}
			fmt.Fprintf(w, "apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: %s\nendpoints:\n  - url: %s\n", m.host, m.endpoint)
			if skipFallback {
				fmt.Fprintln(w, "skipFallback: true")
			}
		}
	case "containerd":
		for _, m := range ms {
			var b strings.Builder
			server := m.origin
			if m.host == "docker.io" {
				server = "https://registry-1.docker.io"
			}
			if skipFallback || server == "" {
				// With no fallback, the mirror is the only host.
				server = m.endpoint
			}
			fmt.Fprintf(&b, "server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", server, m.endpoint)
			rel := filepath.Join("certs.d", m.host, "hosts.toml")
			if dir == "" {
				fmt.Fprintf(w, "# %s\n%s\n", rel, b.String())
				continue
			}
			p := filepath.Join(dir, m.host, "hosts.toml")
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
				return err
			}
			fmt.Fprintln(w, p)
		}
	case "k3s":
		fmt.Fprintln(w, "mirrors:")
		for _, m := range ms {
			fmt.Fprintf(w, "  %s:\n    endpoint:\n      - %q\n", m.host, m.endpoint)
		}
	case "kind":
		fmt.Fprintln(w, "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\ncontainerdConfigPatches:\n  - |-")
		for _, m := range ms {
			fmt.Fprintf(w, "    [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.%q]\n      endpoint = [%q]\n", m.host, m.endpoint)
		}
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
