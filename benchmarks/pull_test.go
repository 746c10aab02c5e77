package benchmarks

import (
	"context"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/fixtures"
)

// baseline keeps a cold and a direct pull time measured in this process, so
// warm's ratios compare numbers of one run.
var baseline struct {
	sync.Mutex
	cold, direct float64
}

func report(b *testing.B, total result, unit string) {
	n := float64(b.N)
	b.ReportMetric(total.Seconds/n, unit)
	b.ReportMetric(float64(total.UpstreamBytes)/1e6/n, "upstream-MB/op")
	b.ReportMetric(float64(total.UpstreamRequests)/n, "upstream-requests/op")
	b.ReportMetric(float64(total.UpstreamManifestGETs)/n, "upstream-manifest-GETs/op")
	if total.ConfigS+total.CreateS+total.ReadyS > 0 {
		b.ReportMetric(total.ConfigS/n, "config-s/op")
		b.ReportMetric(total.CreateS/n, "create-s/op")
		b.ReportMetric(total.ReadyS/n, "ready-s/op")
	}
}

func add(a, r result) result {
	a.Seconds += r.Seconds
	a.UpstreamBytes += r.UpstreamBytes
	a.UpstreamRequests += r.UpstreamRequests
	a.UpstreamManifestGETs += r.UpstreamManifestGETs
	a.ConfigS += r.ConfigS
	a.CreateS += r.CreateS
	a.ReadyS += r.ReadyS
	a.ReadyCPUS += r.ReadyCPUS
	return a
}

func BenchmarkPull(b *testing.B) {
	env := newBenchEnv(b, knobs)
	b.Logf("%s, %.1f MB per pull", knobs, float64(env.Upstreams.PullSize())/1e6)
	ctx := context.Background()

	b.Run("direct", func(b *testing.B) {
		var total result
		for range b.N {
			r, err := env.PullDirect(ctx)
			if err != nil {
				b.Fatal(err)
			}
			total = add(total, r)
		}
		report(b, total, "pull-s/op")
		baseline.Lock()
		baseline.direct = total.Seconds / float64(b.N)
		baseline.Unlock()
	})

	b.Run("cold", func(b *testing.B) {
		var total result
		for range b.N {
			b.StopTimer()
			set, stop, err := env.StartCaches(ctx) // empty storage every iteration
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			r, err := env.PullThrough(ctx, set)
			b.StopTimer()
			stop()
			if err != nil {
				b.Fatal(err)
			}
			total = add(total, r)
			b.StartTimer()
		}
		report(b, total, "pull-s/op")
		baseline.Lock()
		baseline.cold = total.Seconds / float64(b.N)
		baseline.Unlock()
	})

	b.Run("warm", func(b *testing.B) {
		b.StopTimer()
		set := env.NewCaches(b)
		fill, err := env.PullThrough(ctx, set)
		if err != nil {
			b.Fatal(err)
		}
		cold, direct := baselines(b, env, fill)
		b.StartTimer()
		var total result
		for range b.N {
			r, err := env.PullThrough(ctx, set)
			if err != nil {
				b.Fatal(err)
			}
			total = add(total, r)
		}
		report(b, total, "pull-s/op")
		warm := total.Seconds / float64(b.N)
		b.ReportMetric(cold/warm, "speedup-x")
		// One meaning for of-direct everywhere: time through the cache over
		// time straight from the upstream (below 1: faster than direct).
		b.ReportMetric(warm/direct, "of-direct")
	})
}

// baselines returns cold and direct pull times of this process, measuring
// what the cold and direct sub-benchmarks did not.
func baselines(b *testing.B, env *benchEnv, fill result) (cold, direct float64) {
	baseline.Lock()
	defer baseline.Unlock()
	cold, direct = baseline.cold, baseline.direct
	if cold == 0 {
		cold = fill.Seconds
	}
	if direct == 0 {
		r, err := env.PullDirect(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		direct = r.Seconds
	}
	return cold, direct
}

// BenchmarkConcurrentColdPull is three nodes booting at once on a cold
// cache. upstream-x is the upstream blob bytes over one set's bytes: 3.00
// for distribution's proxy alone (each in-flight blob refetched per
// client), 1.00 when each blob is fetched once.
func BenchmarkConcurrentColdPull(b *testing.B) {
	env := newBenchEnv(b, knobs)
	ctx := context.Background()
	const clients = 3
	var total result
	var upstreamBytes, contentBytes int64
	var elapsed time.Duration
	// One client alone on a cold cache, timed the same way, for comparison.
	singleSet, stopSingle, err := env.StartCaches(ctx)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	_, err = env.PullThrough(ctx, singleSet)
	single := time.Since(t0)
	stopSingle()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		set, stop, err := env.StartCaches(ctx)
		if err != nil {
			b.Fatal(err)
		}
		before := env.Upstreams.Total()
		b.StartTimer()
		start := time.Now()
		var g errgroup.Group
		for range clients {
			g.Go(func() error { _, err := env.PullThrough(ctx, set); return err })
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		elapsed += time.Since(start)
		b.StopTimer()
		d := env.Upstreams.Total().Sub(before)
		upstreamBytes += d.BytesSent
		contentBytes += d.ContentBytes
		total.UpstreamRequests += d.Requests()
		total.UpstreamManifestGETs += d.ManifestGET
		stop()
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(elapsed.Seconds()/n, "pull-s/op")
	b.ReportMetric(float64(upstreamBytes)/1e6/n, "upstream-MB/op")
	b.ReportMetric(float64(total.UpstreamRequests)/n, "upstream-requests/op")
	b.ReportMetric(float64(total.UpstreamManifestGETs)/n, "upstream-manifest-GETs/op")
	b.ReportMetric(float64(contentBytes)/n/float64(env.Upstreams.UniquePullSize()), "upstream-x")
	// Three clients at once against one client alone, same process.
	b.ReportMetric(elapsed.Seconds()/n/single.Seconds(), "of-single-cold")
}

// BenchmarkWarmPullUpstreamDown is a warm pull whose tags are due for
// revalidation while the upstream is down: accepting connections and never
// answering (hung), or refusing them (refused). The caches must fall back to
// their copies within the revalidation timeout. Each iteration also pulls
// through a second warm set while the upstream is healthy, untimed:
// pull-s/op is the pull with the upstream down, healthy-pull-s/op the
// healthy one, and of-healthy their ratio, means over the same b.N
// (target: the down pull within 1 s of the healthy one).
func BenchmarkWarmPullUpstreamDown(b *testing.B) {
	for _, kind := range []fixtures.FaultKind{fixtures.FaultHang, fixtures.FaultRefuse} {
		name := map[fixtures.FaultKind]string{fixtures.FaultHang: "hung", fixtures.FaultRefuse: "refused"}[kind]
		b.Run(name, func(b *testing.B) {
			env := newBenchEnv(b, knobs)
			ctx := context.Background()
			// Two sets, so the healthy samples never see the back-off the
			// down ones cause.
			down := env.NewCaches(b, cache.WithTagTTL(-1)) // revalidate every pull
			healthy := env.NewCaches(b, cache.WithTagTTL(-1))
			for _, set := range []*cache.Set{down, healthy} {
				if _, err := env.PullThrough(ctx, set); err != nil {
					b.Fatal(err)
				}
			}
			fault := func(f fixtures.Fault) {
				if err := env.Upstreams.SetFault(f); err != nil {
					b.Fatal(err)
				}
			}
			b.Cleanup(func() { env.Upstreams.SetFault(fixtures.Fault{}) })
			b.ResetTimer()
			var downTotal, healthyTotal result
			for range b.N {
				b.StopTimer()
				fault(fixtures.Fault{})
				r, err := env.PullThrough(ctx, healthy)
				if err != nil {
					b.Fatal(err)
				}
				healthyTotal = add(healthyTotal, r)
				fault(fixtures.Fault{Kind: kind})
				b.StartTimer()
				r, err = env.PullThrough(ctx, down)
				if err != nil {
					b.Fatal(err)
				}
				downTotal = add(downTotal, r)
			}
			b.StopTimer()
			n := float64(b.N)
			b.ReportMetric(downTotal.Seconds/n, "pull-s/op")
			b.ReportMetric(healthyTotal.Seconds/n, "healthy-pull-s/op")
			b.ReportMetric(downTotal.Seconds/healthyTotal.Seconds, "of-healthy")
		})
	}
}
