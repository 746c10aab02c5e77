package standinvm

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/pullthrough/pullthrough/internal/standin"
)

// ConfigArg is the kernel argument that carries the machine config's URL,
// as Talos's launcher sets it (talos.config=http://<gateway>:<port>/config.yaml).
const ConfigArg = "talos.config"

// Options tune Boot. The zero value is what the VM's /init uses.
type Options struct {
	Cmdline    string // default: /proc/cmdline
	ModulesDir string // default: ModulesDir
	Interface  string // default: eth0, the kernel's name for the one NIC
	// NetTimeout bounds waiting for the NIC, DHCP and the config server.
	NetTimeout time.Duration
	Standin    standin.Options
}

// ConfigURL returns talos.config's value from a kernel command line.
func ConfigURL(cmdline string) (string, error) {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, ConfigArg+"="); ok && v != "" {
			if !strings.HasPrefix(v, "http://") && !strings.HasPrefix(v, "https://") {
				return "", fmt.Errorf("kernel argument %s=%q: the stand-in VM fetches its config over HTTP only", ConfigArg, v)
			}
			return v, nil
		}
	}
	return "", fmt.Errorf("kernel command line has no %s= argument: %q", ConfigArg, cmdline)
}

// Boot is the stand-in VM's life up to the summary: modules, network,
// config, pulls. It writes progress and then the summary line to console,
// and returns an error (for an standin.ErrorPrefix line) when the node
// could not get as far as pulling.
func Boot(ctx context.Context, console io.Writer, opts Options) error {
	if opts.ModulesDir == "" {
		opts.ModulesDir = ModulesDir
	}
	if opts.Interface == "" {
		opts.Interface = "eth0"
	}
	if opts.NetTimeout <= 0 {
		opts.NetTimeout = 3 * time.Minute
	}
	if opts.Cmdline == "" {
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			return fmt.Errorf("reading the kernel command line: %w", err)
		}
		opts.Cmdline = string(b)
	}
	url, err := ConfigURL(opts.Cmdline)
	if err != nil {
		return err
	}
	mods, err := loadModules(opts.ModulesDir)
	if err != nil {
		return err
	}
	fmt.Fprintf(console, "standin-vm: loaded modules %s\n", strings.Join(mods, " "))

	nctx, cancel := context.WithTimeout(ctx, opts.NetTimeout)
	defer cancel()
	lease, err := dhcpUp(nctx, opts.Interface)
	if err != nil {
		return err
	}
	fmt.Fprintf(console, "standin-vm: DHCP lease %s\n", lease)

	cfg, err := FetchConfig(nctx, url)
	if err != nil {
		return err
	}
	fmt.Fprintf(console, "standin-vm: machine config from %s: %d bytes\n", url, len(cfg))
	node, err := standin.Load(cfg)
	if err != nil {
		return fmt.Errorf("machine config from %s: %w", url, err)
	}
	so := opts.Standin
	if so.Hostname == "" {
		so.Hostname = lease.Hostname
	}
	if so.Log == nil {
		so.Log = console
	}
	s := standin.Run(ctx, node, so)
	return standin.WriteSummary(console, s)
}

// FetchConfig gets the machine config, retrying while the launcher's
// server is not reachable yet.
func FetchConfig(ctx context.Context, url string) ([]byte, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	var last error
	for {
		b, err := get(ctx, client, url)
		if err == nil {
			return b, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("fetching the machine config from %s: %w (last: %v)", url, ctx.Err(), last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func get(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s", resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 16<<20))
}
