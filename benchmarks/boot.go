package benchmarks

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
	"github.com/pullthrough/pullthrough/provisioners"
)

// NodeImage is the docker node image boots use: $PULLTHROUGH_TALOS_IMAGE if
// set (a real Talos), else the stand-in, built here when missing.
func (e *benchEnv) NodeImage(tb testing.TB, log *slog.Logger) string {
	return e.nodeImage(tb, log, false)
}

// PreloadedImage is the stand-in node that holds every image already, for
// the floor of a boot; "" with a real Talos image, which has no such form.
func (e *benchEnv) PreloadedImage(tb testing.TB, log *slog.Logger) string {
	if os.Getenv(provisioners.EnvTalosImage) != "" {
		return ""
	}
	return e.nodeImage(tb, log, true)
}

func (e *benchEnv) nodeImage(tb testing.TB, log *slog.Logger, preloaded bool) string {
	tb.Helper()
	if img := os.Getenv(provisioners.EnvTalosImage); img != "" {
		return img
	}
	cli := dockerenv.Require(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	build := fixtures.BuildStandinImage
	if preloaded {
		build = fixtures.BuildPreloadedStandinImage
	}
	img, err := build(ctx, cli, e.benchKnobs.TalosVersion, log)
	if err != nil {
		tb.Fatalf("building the stand-in node image: %v", err)
	}
	return img
}

// Boot creates a docker cluster whose nodes pull through set, waits until it
// is ready, and destroys it. Seconds is the provisioner's create and the wait
// until ready: what the caches can change. Generating the configs (keys
// whose generation time varies by seconds from one boot to the next on 2
// cores) is reported on its own, as ConfigS.
func (e *benchEnv) Boot(ctx context.Context, set *cache.Set, spec provisioners.Spec, log *slog.Logger) (r result, err error) {
	return e.BootFor(ctx, "", set, spec, log)
}

// BootNodes is Boot, also returning each node's own pull time (seconds).
func (e *benchEnv) BootNodes(ctx context.Context, set *cache.Set, spec provisioners.Spec, log *slog.Logger) (result, []float64, error) {
	var pulls []float64
	r, err := e.boot(ctx, "", set, spec, log, func(c *provisioners.Cluster, ready *fixtures.StandinReadiness) {
		if ready == nil {
			return
		}
		for _, n := range c.Nodes() {
			if nr, ok := ready.NodeReport(n.Name); ok {
				pulls = append(pulls, nr.Seconds)
			}
		}
	})
	return r, pulls, err
}

// cpuSeconds is the CPU time this process has used, user and system.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// BootFor is Boot, recorded for the report (-pullthrough.report) under the
// benchmark's name.
func (e *benchEnv) BootFor(ctx context.Context, bench string, set *cache.Set, spec provisioners.Spec, log *slog.Logger) (r result, err error) {
	return e.boot(ctx, bench, set, spec, log, nil)
}

func (e *benchEnv) boot(ctx context.Context, bench string, set *cache.Set, spec provisioners.Spec, log *slog.Logger,
	after func(*provisioners.Cluster, *fixtures.StandinReadiness)) (r result, err error) {
	before := e.Upstreams.Total()
	opts := []provisioners.Option{provisioners.WithCaches(set), provisioners.WithLogger(log)}
	var ready *fixtures.StandinReadiness
	if fixtures.IsStandinImage(spec.Image) || (spec.Provisioner == provisioners.Qemu && os.Getenv("PULLTHROUGH_TALOS_KERNEL") == "") {
		ready = fixtures.StandinReady()
		opts = append(opts, provisioners.WithReadiness(ready))
	}
	c, err := provisioners.Create(ctx, spec, opts...)
	if err != nil {
		return result{}, err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if derr := c.Destroy(dctx); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	cpu := cpuSeconds()
	if err := c.Wait(ctx); err != nil {
		return result{}, err
	}
	readyCPU := cpuSeconds() - cpu
	tm := c.Timings()
	r = result{Seconds: (tm.Create + tm.Ready).Seconds(), ConfigS: tm.Config.Seconds(), CreateS: tm.Create.Seconds(), ReadyS: tm.Ready.Seconds(),
		ReadyCPUS: readyCPU}
	d := e.Upstreams.Total().Sub(before)
	r.UpstreamBytes, r.UpstreamRequests, r.UpstreamContentBytes, r.UpstreamManifestGETs = d.BytesSent, d.Requests(), d.ContentBytes, d.ManifestGET
	if after != nil {
		after(c, ready)
	}
	if bench != "" {
		for _, n := range c.Nodes() {
			rec := bootRecord{Bench: bench, Cluster: spec.Name, Node: n.Name, ConfigS: r.ConfigS, CreateS: r.CreateS, ReadyS: r.ReadyS,
				UpstreamMB: float64(r.UpstreamBytes) / 1e6}
			if ready != nil {
				if nr, ok := ready.NodeReport(n.Name); ok {
					rec.PullS = nr.Seconds
				}
			}
			boots.add(rec)
		}
	}
	if log != nil {
		log.Info("booted", "cluster", spec.Name, "timings", c.Timings().String())
	}
	return r, nil
}
