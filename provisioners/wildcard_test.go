package provisioners_test

import (
	"context"
	"fmt"
	"strings"
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
	spec := clusterSpec(t, "wild", w.image)
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

// Which node pulled what: the caches' counters of each node's address equal
// what that node reports it received, to the byte.
func TestDockerClusterPullsAreAttributedPerNode(t *testing.T) {
	w := newStandinWorld(t)
	spec := clusterSpec(t, "attr", w.image)
	spec.Workers = 2
	ready := fixtures.StandinReady()
	c := provisioners.New(t, spec, provisioners.WithCaches(w.caches), provisioners.WithReadiness(ready))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	require.NoError(t, c.Wait(ctx))
	pulls := c.Pulls()
	require.Len(t, pulls, 3)
	sums := ready.Summaries()
	var served int64
	for _, p := range pulls {
		require.NotNil(t, p.Report, p.Node)
		assert.Equal(t, sums[p.Node].Bytes, p.Caches.ServedBytes, "%s (%s): bytes the caches served it", p.Node, p.Addr)
		assert.Equal(t, sums[p.Node].Requests, p.Caches.Requests, "%s: requests", p.Node)
		assert.Equal(t, p.Report.Bytes, p.Caches.ServedBytes, p.Node)
		assert.Zero(t, p.Report.Fallbacks, p.Node)
		served += p.Caches.ServedBytes
	}
	assert.Equal(t, w.caches.Total().ServedBytes, served, "every byte served is attributed to a node")
	table := c.PullTable()
	for _, p := range pulls {
		assert.Contains(t, table, strings.TrimPrefix(p.Node, "/"))
	}
	t.Log("\n" + table)
}
