package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pullthrough/pullthrough/cache"
)

func newUp() *cobra.Command {
	var f cacheFlags
	var osPorts, loopbackOnly, open bool
	var bridge, cidr, mode, name, network string
	var detached bool
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start the caches and print the talosctl lines that use them; serve until Ctrl-C",
		Long: `up starts one cache per upstream on the guide's ports (5000–5006), listening on every
interface as 'docker run -p' does (clients are admitted from loopback, Docker's bridges and
Talos's qemu bridges only), prints the talosctl cluster create lines for the docker and qemu
provisioners, serves until SIGINT or SIGTERM, then prints what each cache did.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := f.list(); err != nil {
				return err
			}
			m, err := parseMode(mode)
			if err != nil {
				return err
			}
			gw, err := cache.GatewayIP(cidr)
			if err != nil {
				return usagef("--cidr %q: %v", cidr, err)
			}
			root, err := f.root()
			if err != nil {
				return err
			}
			if network != "" && !detached {
				return usagef("--network %q: only with --detach (the caches then run in a container on that Docker network)", network)
			}
			if detached {
				if osPorts {
					return usagef("--detach with --os-ports: a detached cache needs ports known in advance")
				}
				return detach(cmd, name, root, network, cidr)
			}
			opts, err := f.options(cmd, m)
			if err != nil {
				return err
			}
			if !osPorts {
				opts = append(opts, cache.WithFixedPorts())
			}
			if open {
				opts = append(opts, cache.WithOpenAccess())
			}
			bridgeFrom := "--bridge"
			if bridge == "" {
				bridge, bridgeFrom = dockerNodeAddr(cmd.Context())
			} else if net.ParseIP(bridge) == nil {
				return usagef("--bridge %q: want the IP address Docker nodes reach this host at, such as 172.17.0.1", bridge)
			}
			if loopbackOnly {
				opts = append(opts, cache.WithListenAddrs("127.0.0.1"))
			} else {
				opts = append(opts, cache.WithListenAll())
			}
			startCtx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			set, err := cache.Start(startCtx, opts...)
			cancel()
			if err != nil {
				return startError(err)
			}
			defer set.Close()
			out := cmd.OutOrStdout()
			for _, c := range set.Caches() {
				state := "started"
				if c.Reused() {
					state = "already served by another pullthrough process; sharing it"
				}
				fmt.Fprintf(out, "# %s → %s on :%d (%s), storage %s\n", c.Host(), c.Upstream().URL, c.Port(), state, c.StorageDir())
			}
			fmt.Fprintln(out)
			switch {
			case loopbackOnly:
				// Nothing but this host reaches them: no mirror lines that
				// nodes could not use.
				fmt.Fprintln(out, "# --loopback-only: no cluster node can reach these caches; clients on this host use http://127.0.0.1:PORT (start without --loopback-only for nodes)")
			default:
				if bridge != "" {
					fmt.Fprintf(out, "# Docker provisioner: nodes reach this host at %s %s\n", bridgeFrom, bridge)
					printTalosctl(out, set, "docker", bridge, "")
					printTalosctlDefault(out, set, "docker", bridge, "")
				} else {
					fmt.Fprintln(out, "# Docker provisioner: "+bridgeFrom)
				}
				fmt.Fprintf(out, "# QEMU provisioner: nodes reach this host at the gateway of --cidr %s, %s (the bridge appears with the cluster)\n", cidr, gw)
				printTalosctl(out, set, "qemu", gw, cidr)
				printTalosctlDefault(out, set, "qemu", gw, cidr)
			}
			fmt.Fprintln(out, "# Talos config patches and configs for kind, k3s, containerd and Docker: pullthrough config --format …")
			<-cmd.Context().Done()
			fmt.Fprintln(out)
			for _, c := range set.Caches() {
				st := c.Stats()
				fmt.Fprintf(out, "# %s: %d requests, %d hits, %d misses, %s from upstream, %s served\n",
					c.Host(), st.Requests, st.Hits, st.Misses, mb(st.UpstreamBytes), mb(st.ServedBytes))
			}
			return nil
		},
	}
	f.register(cmd)
	f.registerRun(cmd)
	cmd.Flags().BoolVar(&osPorts, "os-ports", false, "let the system pick free ports instead of the guide's 5000–5006")
	cmd.Flags().BoolVar(&loopbackOnly, "loopback-only", false, "listen on 127.0.0.1 only (no nodes can reach the caches)")
	cmd.Flags().StringVar(&bridge, "bridge", "", "address Docker nodes reach this host at (default: docker0's)")
	cmd.Flags().StringVar(&cidr, "cidr", "10.5.0.0/24", "the qemu provisioner's --cidr; its gateway is where qemu nodes reach the caches")
	cmd.Flags().StringVar(&mode, "mode", "online", "online, offline or strict")
	cmd.Flags().BoolVarP(&detached, "detach", "d", false, "run in a container of this project's own image that restarts with Docker, as the guide's docker run --restart always does")
	cmd.Flags().StringVar(&name, "name", defaultContainerName, "name of the detached container")
	cmd.Flags().StringVar(&network, "network", "", "with --detach: run the container on this Docker network (a cluster's, made with Talos's labels and --cidr when missing) at the subnet's last address, for nodes that cannot reach this host (rootless Docker, Docker Desktop, a remote daemon)")
	cmd.Flags().BoolVar(&open, "open", false, "admit clients from any address (default: loopback, this host's addresses and local bridges)")
	return cmd
}

func parseMode(s string) (cache.Mode, error) {
	switch s {
	case "online":
		return cache.Online, nil
	case "offline":
		return cache.Offline, nil
	case "strict":
		return cache.Strict, nil
	}
	return 0, usagef("--mode %q: want online, offline or strict", s)
}

// printTalosctl prints talosctl v1.13's command for a provisioner: the
// docker and qemu forms are subcommands; a bare `talosctl cluster create`
// is the developer command that always uses QEMU.
func printTalosctl(w io.Writer, set *cache.Set, provisioner, addr, cidr string) {
	var lines []string
	for _, c := range set.Caches() {
		lines = append(lines, fmt.Sprintf("--registry-mirror %s=http://%s", c.Host(), net.JoinHostPort(addr, fmt.Sprint(c.Port()))))
	}
	printTalosctlLines(w, provisioner, cidr, lines)
}

// printTalosctlDefault prints the one-line form: every cache port serves
// every registry of the set (containerd's ?ns=), so Talos's "*" mirror on
// the first port stands for all of them.
func printTalosctlDefault(w io.Writer, set *cache.Set, provisioner, addr, cidr string) {
	cs := set.Caches()
	if len(cs) == 0 {
		return
	}
	fmt.Fprintln(w, "# or every registry through one endpoint (each port serves them all):")
	fmt.Fprintf(w, "talosctl cluster create %s", provisioner)
	if cidr != "" {
		fmt.Fprintf(w, " --cidr %s", cidr)
	}
	fmt.Fprintf(w, " --registry-mirror '*=http://%s'\n", net.JoinHostPort(addr, fmt.Sprint(cs[0].Port())))
}

func printTalosctlLines(w io.Writer, provisioner, cidr string, mirrorFlags []string) {
	fmt.Fprintf(w, "talosctl cluster create %s", provisioner)
	if cidr != "" {
		fmt.Fprintf(w, " --cidr %s", cidr)
	}
	fmt.Fprintf(w, " \\\n  %s\n", strings.Join(mirrorFlags, " \\\n  "))
}
