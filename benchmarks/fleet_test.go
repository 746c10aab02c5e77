package benchmarks

import (
	"context"
	"fmt"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/pullthrough/pullthrough/internal/engine"
	"github.com/pullthrough/pullthrough/internal/fleet"
	"github.com/pullthrough/pullthrough/internal/fleettest"
)

// startTier starts one fleet instance (what `pullthrough serve` runs): a
// cache per upstream sharing the bucket and Redis, under key prefix run.
func startTier(b *testing.B, env *benchEnv, redis, s3 string, run string) map[string]string {
	mirrors := map[string]string{}
	for _, u := range env.Upstreams.Upstreams() {
		remote, _ := url.Parse(u.URL())
		srv := httptest.NewUnstartedServer(nil)
		fl, err := fleet.New(context.Background(), fleet.Config{
			S3Endpoint: "http://" + s3, Bucket: fleettest.Bucket, AccessKey: fleettest.AccessKey, SecretKey: fleettest.SecretKey,
			Prefix: run + "/" + u.Host() + "/", Redis: "redis://" + redis, Advertise: "http://" + srv.Listener.Addr().String(),
		})
		if err != nil {
			b.Fatal(err)
		}
		c, err := engine.New(context.Background(), engine.Config{Host: u.Host(), Remote: remote, StorageDir: b.TempDir(), Fleet: fl})
		if err != nil {
			b.Fatal(err)
		}
		srv.Config.Handler = c
		srv.Start()
		b.Cleanup(func() { srv.Close(); c.Close(); fl.Close() })
		mirrors[u.Host()] = srv.URL
	}
	return mirrors
}

// BenchmarkFleetColdPull: 4 `serve` instances on one bucket and one Redis,
// 8 clients pulling the Talos image set cold through them at once (two per
// instance). upstream-x is the origin's bytes over one set's bytes: 1.00
// when each blob is fetched once across the fleet (distribution's proxy on a
// shared bucket fetches once per instance: 4.00). of-alone is the fleet's
// pull time over one client through one instance alone, same run.
func BenchmarkFleetColdPull(b *testing.B) {
	redis, s3 := fleettest.Redis(b), fleettest.S3(b)
	env := newBenchEnv(b, knobs)
	ctx := context.Background()
	const instances, clients = 4, 8
	// One instance, one client, for comparison.
	alone := startTier(b, env, redis.Addr, s3.Addr, "alone")
	if _, err := nodeFor(env.benchKnobs.TalosVersion, alone); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	if _, err := env.PullMirrors(ctx, alone); err != nil {
		b.Fatal(err)
	}
	single := time.Since(t0)
	b.ResetTimer()
	var cold coldPulls
	for i := range b.N {
		b.StopTimer()
		var tier []map[string]string
		for range instances {
			m := startTier(b, env, redis.Addr, s3.Addr, fmt.Sprintf("run%d", i))
			if _, err := nodeFor(env.benchKnobs.TalosVersion, m); err != nil { // configs outside the timing
				b.Fatal(err)
			}
			tier = append(tier, m)
		}
		clientMirrors := make([]map[string]string, clients)
		for c := range clients {
			clientMirrors[c] = tier[c%instances]
		}
		b.StartTimer()
		cold.pull(ctx, b, env, clientMirrors)
	}
	cold.report(b, env)
	b.ReportMetric(cold.elapsed.Seconds()/float64(b.N)/single.Seconds(), "of-alone")
}
