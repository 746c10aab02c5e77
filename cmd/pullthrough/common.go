package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pullthrough/pullthrough/cache"
)

// cacheFlags are the flags every command that runs or finds caches takes.
type cacheFlags struct {
	upstreams []string
	tiers     []string
	helpers   []string
	portsFrom int
	storage   string
	verbose   bool
	tagTTL    time.Duration
	stall     time.Duration
}

func (f *cacheFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&f.upstreams, "upstream", nil, "host=URL of a registry to cache, e.g. docker.io=https://registry-1.docker.io (repeatable; default: the guide's seven)")
	cmd.Flags().StringArrayVar(&f.tiers, "tier", nil, "host=URL of a fleet tier tried before that host's origin: pullthrough serve, Harbor (a path is a project prefix), registry:2, zot (repeatable, in order)")
	cmd.Flags().IntVar(&f.portsFrom, "ports-from", 0, "ports from this one on, in upstream order, instead of the guide's 5000–5006")
	cmd.Flags().StringVar(&f.storage, "storage", "", "storage root (default: the user's cache directory, shared with cachetest.Main)")
	cmd.Flags().BoolVarP(&f.verbose, "verbose", "v", false, "log each cache's debug lines")
}

// registerRun adds the flags of commands that run caches (up, serve).
func (f *cacheFlags) registerRun(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&f.helpers, "credential-helper", nil, "host=NAME: authenticate to that upstream with docker-credential-NAME (repeatable)")
	cmd.Flags().DurationVar(&f.tagTTL, "tag-ttl", cache.DefaultTagTTL, "how long a tag confirmed by upstream is served without asking again (negative: always ask)")
	cmd.Flags().DurationVar(&f.stall, "stall-timeout", cache.DefaultStallTimeout, "abandon a blob download that receives less than 32 KiB in this long")
}

// options are the cache options the flags make, the same for every
// command that runs caches: one wiring path.
func (f *cacheFlags) options(cmd *cobra.Command, m cache.Mode) ([]cache.Option, error) {
	ups, err := f.list()
	if err != nil {
		return nil, err
	}
	for _, h := range f.helpers {
		host, name, ok := strings.Cut(h, "=")
		if !ok || host == "" || name == "" {
			return nil, usagef("--credential-helper %q: want host=NAME, such as gcr.io=gcloud", h)
		}
		found := false
		for i := range ups {
			if ups[i].Host == host {
				ups[i].Credentials, found = cache.FromCredentialHelper(name), true
			}
		}
		if !found {
			return nil, usagef("--credential-helper %q: no upstream %s (see --upstream)", h, host)
		}
	}
	root, err := f.root()
	if err != nil {
		return nil, err
	}
	return []cache.Option{cache.WithUpstreams(ups...), cache.WithLogger(f.logger(cmd)), cache.WithMode(m),
		cache.WithStorageDir(root), cache.WithTagTTL(f.tagTTL), cache.WithStallTimeout(f.stall)}, nil
}

// checkListen validates --listen.
func checkListen(ip string) error {
	if net.ParseIP(ip) == nil {
		return usagef("--listen %q: want an IP address of this host, such as 0.0.0.0 or 10.0.0.5", ip)
	}
	return nil
}

// startError adds what a person can do about a port already taken.
func startError(err error) error {
	if errors.Is(err, cache.ErrPortInUse) {
		return fmt.Errorf("%w\n(--ports-from N or --os-ports picks other ports; `pullthrough status` lists the caches running on this host, with their ports and storage)", err)
	}
	return err
}

// list returns the upstreams: the flags', with the guide's ports for the
// hosts it knows, or the defaults.
func (f *cacheFlags) list() ([]cache.Upstream, error) {
	out, err := f.parseUpstreams()
	if err != nil {
		return nil, err
	}
	for _, t := range f.tiers {
		host, url, ok := strings.Cut(t, "=")
		if !ok || host == "" || url == "" {
			return nil, usagef("--tier %q: want host=URL, such as docker.io=http://cache.ci:5000", t)
		}
		found := false
		for i := range out {
			if out[i].Host == host {
				out[i].Tiers = append(out[i].Tiers, url)
				found = true
			}
		}
		if !found {
			return nil, usagef("--tier %q: no upstream %s to put it in front of", t, host)
		}
	}
	if f.portsFrom != 0 {
		if f.portsFrom < 1 || f.portsFrom+len(out) > 65536 {
			return nil, usagef("--ports-from %d: want a port from 1 to %d", f.portsFrom, 65536-len(out))
		}
		for i := range out {
			out[i].Port = f.portsFrom + i
		}
	}
	return out, nil
}

func (f *cacheFlags) parseUpstreams() ([]cache.Upstream, error) {
	if len(f.upstreams) == 0 {
		return cache.DefaultUpstreams(), nil
	}
	var out []cache.Upstream
	next := 5100
	seen := map[string]bool{}
	for _, v := range f.upstreams {
		u, err := parseUpstream(v)
		if err != nil {
			return nil, err
		}
		if seen[u.Host] {
			return nil, usagef("--upstream %q: %s is given twice: want one --upstream per registry host", v, u.Host)
		}
		seen[u.Host] = true
		for _, d := range cache.DefaultUpstreams() {
			if d.Host == u.Host {
				u.Port = d.Port
			}
		}
		if u.Port == 0 {
			u.Port = next
			next++
		}
		out = append(out, u)
	}
	return out, nil
}

// parseUpstream reads one --upstream HOST=URL, with messages in the
// flag's terms (cache.ParseUpstream's speak of the library's fields), and
// never echoing a password given in the URL.
func parseUpstream(v string) (cache.Upstream, error) {
	host, raw, ok := strings.Cut(v, "=")
	shown := host + "=" + redact(raw)
	if !ok || host == "" || raw == "" {
		return cache.Upstream{}, usagef("--upstream %q: want HOST=URL, such as docker.io=https://registry-1.docker.io", shown)
	}
	if _, err := cache.ParseUpstream(host + "=https://example.invalid"); err != nil {
		return cache.Upstream{}, usagef("--upstream %q: %q is not a registry host as image names give it: want lowercase letters, digits, dots and dashes with an optional :PORT, such as docker.io or registry.local:5000", shown, host)
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil || !strings.Contains(raw, "://"):
		return cache.Upstream{}, usagef("--upstream %q: %q is not a URL: want http:// or https:// and a host, such as %s=http://%s", shown, redact(raw), host, strings.TrimPrefix(redact(raw), "//"))
	case u.Scheme != "http" && u.Scheme != "https", u.Host == "":
		return cache.Upstream{}, usagef("--upstream %q: want an http:// or https:// URL with a host, such as %s=https://%s", shown, host, host)
	case u.User != nil:
		return cache.Upstream{}, usagef("--upstream %q: the URL carries credentials; give them with --credential-helper %s=NAME (docker-credential-NAME), never in the URL", shown, host)
	}
	up, err := cache.ParseUpstream(v)
	if err != nil {
		return cache.Upstream{}, usagef("--upstream %q: want HOST=URL, such as docker.io=https://registry-1.docker.io", shown)
	}
	return up, nil
}

// redact hides a password in a URL's user info.
func redact(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		return u.Redacted()
	}
	return raw
}

func (f *cacheFlags) root() (string, error) {
	if f.storage != "" {
		return f.storage, nil
	}
	root, err := cache.DefaultStorageRoot()
	if err != nil {
		return "", fmt.Errorf("%w (use --storage)", err)
	}
	return root, nil
}

func (f *cacheFlags) logger(cmd *cobra.Command) *slog.Logger {
	level := slog.LevelWarn
	if f.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
}

// du is the bytes of the regular files under dir.
func du(dir string) int64 {
	var n int64
	if dir == "" {
		return 0
	}
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
