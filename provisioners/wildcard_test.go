package provisioners_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/provisioners"
)

// One "*" mirror, one port: every image of every registry goes through it,
// routed by the ?ns= containerd (and the stand-in) add, with each registry's
// counters exact and nothing fetched around the caches.
func TestDockerClusterOfStandinsBootsThroughOneWildcardMirror(t *testing.T) {
	w := newStandinWorld(t)
	var log logBuffer
	spec := clusterSpec(t, "wild", w.image, 3)
	ready := fixtures.StandinReady()
	c := provisioners.New(t, spec, provisioners.WithCaches(w.caches), provisioners.WithSingleMirror(),
		provisioners.WithSkipFallback(), provisioners.WithLogger(log.logger()), provisioners.WithReadiness(ready))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	require.NoError(t, c.Wait(ctx), "provisioner log:\n%s", log.String())

	bridge, err := cache.DockerBridgeIP()
	require.NoError(t, err)
	first := w.caches.Caches()[0]
	for _, n := range c.Nodes() {
		info, err := w.cli.ContainerInspect(ctx, n.ID, client.ContainerInspectOptions{})
		require.NoError(t, err)
		assert.Equal(t, map[string][]string{"*": {fmt.Sprintf("http://%s:%d", bridge, first.Port())}},
			userdataMirrors(t, info.Container.Config.Env), "%s: one mirror for every registry", n.Name)
	}

	sums := ready.Summaries()
	require.Len(t, sums, 2)
	var nodeBytes, nodeRequests int64
	for node, s := range sums {
		assert.Equal(t, s.Wanted, s.Images, node)
		assert.Equal(t, w.upstreams.PullSize(), s.Bytes, node)
		assert.Empty(t, s.Fallbacks, "%s pulled around the caches", node)
		nodeBytes += s.Bytes
		nodeRequests += s.Requests
	}
	total := w.caches.Total()
	assert.Equal(t, nodeBytes, total.ServedBytes, "what nodes received is what the caches served")
	assert.Equal(t, nodeRequests, total.Requests)
	// Per registry: what each upstream sent is what its own cache fetched.
	upStats := w.upstreams.Stats()
	for _, cc := range w.caches.Caches() {
		st := cc.Stats()
		u := upStats[cc.Host()]
		assert.Equal(t, u.BytesSent, st.UpstreamBytes, cc.Host())
		assert.Equal(t, u.Requests(), st.UpstreamRequests, cc.Host())
	}
	assert.Equal(t, w.upstreams.UniquePullSize(), w.upstreams.Total().ContentBytes, "each blob once")
	require.NoError(t, c.Destroy(ctx))
	assertNothingLeft(t, w.cli, spec)
}
