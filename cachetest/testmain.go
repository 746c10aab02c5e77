package cachetest

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pullthrough/pullthrough/cache"
)

var current atomic.Pointer[cache.Set]

// Main is for TestMain: it parses flags, starts the caches, runs the tests,
// closes the caches and exits with the tests' code. Tests reach the set with
// Get. If the caches cannot start, Main reports why on stderr, as the testing
// package reports its own failures, and exits 1.
func Main(m *testing.M, opts ...cache.Option) {
	os.Exit(Run(m, opts...))
}

// Run is Main without the exit, for a TestMain with work of its own to do
// after the tests: it returns the code to exit with.
func Run(m *testing.M, opts ...cache.Option) int {
	if !flag.Parsed() {
		flag.Parse()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	set, err := cache.Start(ctx, opts...)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cachetest.Main: %v\n", err)
		return 1
	}
	current.Store(set)
	code := m.Run()
	current.Store(nil)
	if err := set.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "cachetest.Main: closing caches: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Get returns the set Main started, and fails the test if there is none.
// At the test's end, what the caches did while it ran is in its log (go
// test -v shows it), one line per registry: tests running in parallel share
// the counters, so the lines then hold their pulls too.
func Get(tb testing.TB) *cache.Set {
	tb.Helper()
	s := current.Load()
	if s == nil {
		tb.Fatal("cachetest.Get: no cache set is running; call cachetest.Main(m) from TestMain")
	}
	if _, seen := tracked.LoadOrStore(tb, true); !seen {
		base := s.Stats()
		tb.Cleanup(func() {
			tracked.Delete(tb)
			if table := statsTable(s.Stats(), base); table != "" {
				tb.Logf("cachetest: what the caches did during %s:\n%s", tb.Name(), table)
			}
		})
	}
	return s
}

var tracked sync.Map // testing.TB → true, once Get has set up its report

// statsTable is one line per registry whose counters moved since base.
func statsTable(now, base map[string]cache.Stats) string {
	hosts := make([]string, 0, len(now))
	for h := range now {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	var b strings.Builder
	for _, h := range hosts {
		d := now[h].Sub(base[h])
		if d == (cache.Stats{}) {
			continue
		}
		fmt.Fprintf(&b, "  %-20s %d requests, %d hits, %d misses, %.1f MB served, %d upstream requests, %.1f MB from upstream\n",
			h, d.Requests, d.Hits, d.Misses, float64(d.ServedBytes)/1e6, d.UpstreamRequests, float64(d.UpstreamBytes)/1e6)
	}
	return b.String()
}

// New starts a set for one test and closes it when the test ends. Storage is
// a temporary directory unless an option (cache.WithStorageDir) says
// otherwise.
func New(tb testing.TB, opts ...cache.Option) *cache.Set {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	all := append([]cache.Option{cache.WithStorageDir(tb.TempDir())}, opts...)
	set, err := cache.Start(ctx, all...)
	if err != nil {
		tb.Fatalf("cachetest.New: %v", err)
	}
	tb.Cleanup(func() {
		if err := set.Close(); err != nil {
			tb.Errorf("cachetest: closing caches: %v", err)
		}
	})
	return set
}
