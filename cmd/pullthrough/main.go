// Command pullthrough runs the pull-through caches of Talos's guide in one
// process, instead of one `docker run registry:2` per upstream, and prints
// the --registry-mirror flags for talosctl cluster create.
//
//	pullthrough                      # guide ports 5000–5006, docker0's address
//	pullthrough -bridge 10.5.0.1 -listen-all   # for the qemu provisioner
//	pullthrough -upstream registry.k8s.io=http://127.0.0.1:5555 -os-ports
//
// It serves until interrupted. Content stays in the user's cache directory
// (or -storage), so the next start is warm.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pullthrough/pullthrough/cachetest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "pullthrough:", err)
		os.Exit(1)
	}
}

type upstreamFlags []cachetest.Upstream

func (u *upstreamFlags) String() string { return fmt.Sprint([]cachetest.Upstream(*u)) }

func (u *upstreamFlags) Set(v string) error {
	host, url, ok := strings.Cut(v, "=")
	if !ok || host == "" || url == "" {
		return fmt.Errorf("upstream %q: want host=URL, such as docker.io=https://registry-1.docker.io", v)
	}
	*u = append(*u, cachetest.Upstream{Host: host, URL: url})
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pullthrough", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var ups upstreamFlags
	fs.Var(&ups, "upstream", "host=URL of a registry to cache (repeatable; default: the guide's seven)")
	osPorts := fs.Bool("os-ports", false, "let the OS pick ports instead of the guide's 5000–5006")
	bridge := fs.String("bridge", "", "address nodes reach this host on (default: docker0's)")
	listenAll := fs.Bool("listen-all", false, "listen on every interface (needed for the qemu bridge)")
	storage := fs.String("storage", "", "storage directory (default: the user's cache directory)")
	mode := fs.String("mode", "online", "online, offline or strict")
	verbose := fs.Bool("v", false, "log each cache's warnings and debug lines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	opts := []cachetest.Option{cachetest.WithLogger(logger(stderr, *verbose))}
	if len(ups) > 0 {
		// Ports follow the guide's order for the hosts it knows.
		for i := range ups {
			for _, d := range cachetest.DefaultUpstreams() {
				if d.Host == ups[i].Host {
					ups[i].Port = d.Port
				}
			}
		}
		opts = append(opts, cachetest.WithUpstreams(ups...))
	}
	if !*osPorts {
		opts = append(opts, cachetest.WithFixedPorts())
	}
	if *listenAll {
		opts = append(opts, cachetest.WithListenAll())
	}
	if *storage != "" {
		opts = append(opts, cachetest.WithStorageDir(*storage))
	}
	switch *mode {
	case "online":
	case "offline":
		opts = append(opts, cachetest.WithMode(cachetest.Offline))
	case "strict":
		opts = append(opts, cachetest.WithMode(cachetest.Strict))
	default:
		return fmt.Errorf("mode %q: want online, offline or strict", *mode)
	}
	addr := *bridge
	if addr == "" {
		var err error
		if addr, err = cachetest.DockerBridgeIP(); err != nil {
			return fmt.Errorf("%w; name the address nodes use with -bridge", err)
		}
	}
	if !*listenAll {
		opts = append(opts, cachetest.WithListenAddrs(dedupe("127.0.0.1", addr)...))
	}

	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	set, err := cachetest.Start(startCtx, opts...)
	cancel()
	if err != nil {
		return err
	}
	flags, err := set.MirrorFlags(addr)
	if err != nil {
		return errors.Join(err, set.Close())
	}
	for _, c := range set.Caches() {
		state := "started"
		if c.Reused() {
			state = "already running, reused"
		}
		fmt.Fprintf(stdout, "# %s → %s: %s, storage %s\n", c.Host(), c.Upstream().URL, state, c.StorageDir())
	}
	fmt.Fprint(stdout, "talosctl cluster create")
	for _, f := range flags {
		fmt.Fprintf(stdout, " \\\n  --registry-mirror %s", f)
	}
	fmt.Fprintln(stdout)
	<-ctx.Done()
	for _, c := range set.Caches() {
		st := c.Stats()
		fmt.Fprintf(stdout, "# %s: %d requests, %d hits, %d misses, %.1f MB from upstream, %.1f MB served\n",
			c.Host(), st.Requests, st.Hits, st.Misses, float64(st.UpstreamBytes)/1e6, float64(st.ServedBytes)/1e6)
	}
	return set.Close()
}

func dedupe(addrs ...string) []string {
	var out []string
	seen := map[string]bool{}
	for _, a := range addrs {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

func logger(w io.Writer, verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}
