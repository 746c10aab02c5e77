package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/client"
	"github.com/spf13/cobra"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
)

// running is a cache found answering on a port of this host.
type running struct {
	Host      string      `json:"host"`
	URL       string      `json:"url,omitempty"`
	Addr      string      `json:"addr"`
	Port      int         `json:"port"`
	Mode      string      `json:"mode"`
	Storage   string      `json:"storage"`
	Listen    []string    `json:"listen,omitempty"`
	PID       int         `json:"pid,omitempty"`
	Container string      `json:"container,omitempty"`
	Stats     cache.Stats `json:"stats"`
	DiskUsed  int64       `json:"disk_used_bytes"`
}

// findRunning finds the caches running on this host, foreground or
// detached, on any ports: the sets that recorded themselves
// (cache.ListRunning), the containers `up --detach` made under any name,
// and whatever answers on the ports the flags name (the guide's by
// default). Flags the user gave narrow the answer: --storage to caches
// serving from that root, --upstream to those hosts, --ports-from to those
// ports. Commands that start caches of their own for a moment (prefetch,
// verify, export) are left out: they are not what a user asks about.
func findRunning(cmd *cobra.Command, f *cacheFlags) ([]running, error) {
	ctx := cmd.Context()
	ups, err := f.list()
	if err != nil {
		return nil, err
	}
	var out []running
	seen := map[string]bool{}
	add := func(r running, ok bool) {
		if ok && !seen[r.Addr] {
			seen[r.Addr] = true
			out = append(out, r)
		}
	}
	recs, _ := cache.ListRunning() // a record dir that cannot be read costs only discovery
	for _, rec := range recs {
		if rec.PID == os.Getpid() || rec.Labels[labelRole] == roleTransient {
			continue
		}
		for _, c := range rec.Caches {
			r, ok := probe(ctx, loopbackAddr(rec.Listen, c.Port))
			r.URL, r.Listen, r.PID = c.URL, rec.Listen, rec.PID
			add(r, ok)
		}
	}
	for _, d := range detachedCaches(ctx) {
		for _, u := range d.ups {
			r, ok := probe(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(u.Port)))
			r.URL, r.Container = u.URL, d.name
			add(r, ok)
		}
	}
	for _, u := range ups {
		r, ok := probe(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(u.Port)))
		if r.Host == u.Host {
			r.URL = u.URL
		}
		add(r, ok)
	}
	flags := cmd.Flags()
	var keep []running
	for _, r := range out {
		if flags.Changed("storage") && filepath.Dir(filepath.Clean(r.Storage)) != filepath.Clean(f.storage) {
			continue
		}
		if flags.Changed("upstream") && !slices.ContainsFunc(ups, func(u cache.Upstream) bool { return u.Host == r.Host }) {
			continue
		}
		if flags.Changed("ports-from") && (r.Port < f.portsFrom || r.Port >= f.portsFrom+len(ups)) {
			continue
		}
		keep = append(keep, r)
	}
	sort.SliceStable(keep, func(i, j int) bool { return keep[i].Port < keep[j].Port })
	return keep, nil
}

// The label the command's own short-lived sets (prefetch, verify, export)
// carry in their record: a cache such a set started goes away with it.
const (
	labelRole     = "pullthrough.role"
	roleTransient = "transient"
)

// loopbackAddr is where this host reaches a cache listening on addrs.
func loopbackAddr(addrs []string, port int) string {
	ip := "127.0.0.1"
	if len(addrs) > 0 && !slices.Contains(addrs, "0.0.0.0") && !slices.Contains(addrs, "127.0.0.1") {
		ip = addrs[0]
	}
	return net.JoinHostPort(ip, strconv.Itoa(port))
}

// probe asks addr whether a pullthrough cache serves there, and for what.
func probe(ctx context.Context, addr string) (running, bool) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+cache.StatsPath, nil)
	if err != nil {
		return running{}, false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return running{}, false
	}
	defer resp.Body.Close()
	var st cache.Stats
	host := resp.Header.Get(cache.HeaderUpstream)
	if resp.StatusCode != http.StatusOK || host == "" || json.NewDecoder(resp.Body).Decode(&st) != nil {
		return running{}, false
	}
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	_, mode, _ := strings.Cut(resp.Header.Get(cache.HeaderIdentity), "/")
	r := running{Host: host, Addr: addr, Port: p, Mode: mode, Storage: resp.Header.Get(cache.HeaderStorage), Stats: st}
	r.DiskUsed = du(r.Storage)
	return r, true
}

// detached is a container `up --detach` made, and the upstreams its
// command line gives.
type detached struct {
	name    string
	storage string
	ups     []cache.Upstream
}

// detachedCaches lists the running containers of this project's label,
// whatever their name. Without a Docker daemon there are none.
func detachedCaches(ctx context.Context) []detached {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	cli, err := dockerenv.Client(ctx)
	if err != nil {
		return nil
	}
	defer cli.Close()
	list, err := cli.ContainerList(ctx, client.ContainerListOptions{Filters: make(client.Filters).Add("label", labelManaged+"=true")})
	if err != nil {
		return nil
	}
	var out []detached
	mine := runDir()
	for _, c := range list.Items {
		info, err := cli.ContainerInspect(ctx, c.ID, client.ContainerInspectOptions{})
		if err != nil || info.Container.Config == nil {
			continue
		}
		if d, ok := info.Container.Config.Labels[labelRunDir]; ok && d != mine {
			continue // another user's, or another test's
		}
		ups, ok := upstreamsOfCommand(info.Container.Config.Cmd)
		if !ok {
			continue
		}
		out = append(out, detached{name: strings.TrimPrefix(info.Container.Name, "/"), storage: info.Container.Config.Labels[labelStorage], ups: ups})
	}
	return out
}

// upstreamsOfCommand reads the upstreams and ports of an `up` command line,
// as the detached container was given it.
func upstreamsOfCommand(args []string) ([]cache.Upstream, bool) {
	if len(args) == 0 || args[0] != "up" {
		return nil, false
	}
	up := newUp()
	if err := up.ParseFlags(args[1:]); err != nil {
		return nil, false
	}
	var f cacheFlags
	f.upstreams, _ = up.Flags().GetStringArray("upstream")
	f.portsFrom, _ = up.Flags().GetInt("ports-from")
	ups, err := f.list()
	return ups, err == nil
}

// notRunning says where the command looked, and what starts caches.
func notRunning(cmd *cobra.Command, f *cacheFlags) string {
	ups, _ := f.list()
	where := "no pullthrough cache runs on this host (none recorded by a running process, no detached container, none on 127.0.0.1 ports " + portList(ups) + ")"
	var narrowed []string
	for _, n := range []string{"storage", "upstream", "ports-from"} {
		if cmd.Flags().Changed(n) {
			narrowed = append(narrowed, "--"+n)
		}
	}
	if len(narrowed) > 0 {
		where = "no running pullthrough cache matches " + strings.Join(narrowed, ", ") + " (`pullthrough status` with no flags lists every one)"
	}
	return where + "; start them with `pullthrough up`"
}

// runDir is cache.RunDir, or "" where there is none.
func runDir() string {
	d, _ := cache.RunDir()
	return d
}
