package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/pullthrough/pullthrough/cache"
)

// sources are where prefetch, verify and export read each registry's
// images: a running cache's port (prefetch, which fills the storage that
// cache serves from), or caches of the command's own, started on loopback
// over the storage the running caches serve from, or --storage.
type sources struct {
	addr    map[string]string // registry host → host:port
	own     map[string]bool   // addresses of the command's own caches, never shown
	sets    []*cache.Set
	remote  map[string]cache.Stats // running caches' counters at the start, by address
	log     *damageLog
	through []string // running caches pulled through, for the summary
}

// openSources finds or starts a cache for every registry the list names.
// Online (prefetch) pulls through a running cache for the registry when
// one runs; Strict (verify, export) reads the storage a running cache
// serves from, or --storage, through caches of its own that ask no
// upstream.
func openSources(cmd *cobra.Command, f *cacheFlags, imgs []image, mode cache.Mode) (*sources, error) {
	ups, err := f.list()
	if err != nil {
		return nil, err
	}
	found, err := findRunning(cmd, f)
	if err != nil {
		return nil, err
	}
	src := &sources{addr: map[string]string{}, own: map[string]bool{}, remote: map[string]cache.Stats{}, log: newDamageLog(f.logger(cmd), f.verbose)}
	byRoot := map[string][]cache.Upstream{}
	var hosts []string
	for _, i := range imgs {
		if !slices.Contains(hosts, i.host) {
			hosts = append(hosts, i.host)
		}
	}
	defRoot, err := f.root()
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		var run *running
		for i := range found {
			if found[i].Host == h {
				run = &found[i]
				break
			}
		}
		// A strict cache fetches nothing: prefetch then fills its storage
		// through caches of its own.
		if run != nil && mode == cache.Online && run.Mode != cache.Strict.String() {
			src.addr[h] = run.Addr
			src.remote[run.Addr] = run.Stats
			src.through = append(src.through, run.Addr)
			continue
		}
		if run != nil && run.URL != "" && run.Storage != "" {
			u := cache.Upstream{Host: h, URL: run.URL}
			root := filepath.Dir(run.Storage)
			if cache.StorageDirFor(root, u) == filepath.Clean(run.Storage) {
				byRoot[root] = append(byRoot[root], u)
				continue
			}
		}
		i := slices.IndexFunc(ups, func(u cache.Upstream) bool { return u.Host == h })
		if i < 0 {
			url := "https://" + h
			for _, d := range cache.DefaultUpstreams() {
				if d.Host == h {
					url = d.URL
				}
			}
			return nil, usagef("no upstream for registry %s and no running cache for it: add --upstream %s=%s", h, h, url)
		}
		byRoot[defRoot] = append(byRoot[defRoot], ups[i])
	}
	roots := make([]string, 0, len(byRoot))
	for r := range byRoot {
		roots = append(roots, r)
	}
	sort.Strings(roots)
	for _, root := range roots {
		startCtx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
		set, err := cache.Start(startCtx, cache.WithUpstreams(byRoot[root]...), cache.WithStorageDir(root),
			cache.WithListenAddrs("127.0.0.1"), cache.WithMode(mode), cache.WithLogger(slog.New(src.log)),
			cache.WithDamageReport(src.log.note), cache.WithLabels(map[string]string{labelRole: roleTransient}))
		cancel()
		if err != nil {
			src.Close()
			return nil, fmt.Errorf("reading storage %s: %w", root, err)
		}
		src.sets = append(src.sets, set)
		for _, c := range set.Caches() {
			src.addr[c.Host()] = c.Addr()
			src.own[c.Addr()] = true
		}
	}
	return src, nil
}

// Close stops the command's own caches.
func (s *sources) Close() {
	for _, set := range s.sets {
		set.Close()
	}
}

// total is what the caches did for this command: its own caches' counters,
// and the running caches' since the command began (others' pulls meanwhile
// included).
func (s *sources) total() cache.Stats {
	var t cache.Stats
	for _, set := range s.sets {
		t = t.Add(set.Total())
	}
	for addr, before := range s.remote {
		if now, ok := probe(context.Background(), addr); ok {
			t = t.Add(now.Stats.Sub(before))
		}
	}
	return t
}

func (s *sources) damaged() int64 { return s.total().Damaged }

// where names the running caches pulled through, for the summary.
func (s *sources) where() string {
	if len(s.through) == 0 {
		return ""
	}
	return " (through the running caches at " + strings.Join(s.through, ", ") + ")"
}

// clean makes a pull's error readable: the registry's name instead of the
// address of a cache the command started for itself, and no talk of a
// strict mode the user never chose.
func (s *sources) clean(err error, img image) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if addr := s.addr[img.host]; s.own[addr] {
		msg = strings.ReplaceAll(msg, "http://"+addr+"/v2/", img.host+"/")
		msg = strings.ReplaceAll(msg, addr, img.host)
		msg = strings.TrimPrefix(strings.TrimPrefix(msg, "GET "), "HEAD ")
		msg = strings.ReplaceAll(msg, " and the cache is in strict mode", " in storage")
		msg = strings.ReplaceAll(msg, "not cached in strict mode", "not in storage")
	}
	if msg == err.Error() {
		return err
	}
	return errors.New(msg)
}

// damageLog is the logger of the command's own caches: it passes records on
// only with --verbose, so that no raw log line lands in the command's
// output, and keeps the stored files the caches report damaged, to be named
// in the command's own words.
type damageLog struct {
	next    slog.Handler
	verbose bool
	shared  *damaged
}

type damaged struct {
	mu   sync.Mutex
	list []string
}

func newDamageLog(next *slog.Logger, verbose bool) *damageLog {
	return &damageLog{next: next.Handler(), verbose: verbose, shared: &damaged{}}
}

func (d *damageLog) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || (d.verbose && d.next.Enabled(ctx, l))
}

func (d *damageLog) Handle(ctx context.Context, r slog.Record) error {
	if d.verbose {
		return d.next.Handle(ctx, r)
	}
	return nil
}

// note is the caches' damage report (cache.WithDamageReport).
func (d *damageLog) note(dmg cache.Damage) {
	d.shared.mu.Lock()
	defer d.shared.mu.Unlock()
	if !slices.Contains(d.shared.list, dmg.File) {
		d.shared.list = append(d.shared.list, dmg.File)
	}
}

func (d *damageLog) WithAttrs(as []slog.Attr) slog.Handler {
	return &damageLog{next: d.next.WithAttrs(as), verbose: d.verbose, shared: d.shared}
}

func (d *damageLog) WithGroup(name string) slog.Handler {
	return &damageLog{next: d.next.WithGroup(name), verbose: d.verbose, shared: d.shared}
}

// files are the damaged files found, in the order found.
func (d *damageLog) files() []string {
	d.shared.mu.Lock()
	defer d.shared.mu.Unlock()
	return append([]string(nil), d.shared.list...)
}
