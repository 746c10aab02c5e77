package provisioners_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
	"github.com/pullthrough/pullthrough/provisioners"
)

// A stand-in cluster on a rootless Docker daemon pulls everything through
// the caches: the provisioner sees the daemon is rootless and gives nodes
// the host's primary address (docker0's, in the daemon's namespace, is its
// own bridge), the reach check passes from the cluster's network, and the
// stand-ins report every image pulled from the caches with no fallback.
func TestRootlessDockerClusterOfStandinsPullsThroughTheCaches(t *testing.T) {
	cli, _ := dockerenv.RequireRootless(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	hostIP, err := cache.HostIP()
	require.NoError(t, err)
	ups := fixtures.NewTalosUpstreams(t, provisioners.DefaultTalosVersion, fixtures.WithScale(0.002), fixtures.Unthrottled())
	caches := cachetest.New(t, cache.WithUpstreams(cacheUpstreams(ups)...), cache.WithListenAddrs("127.0.0.1", hostIP))
	image, err := fixtures.BuildStandinImage(ctx, cli, provisioners.DefaultTalosVersion, nil)
	require.NoError(t, err)

	var log logBuffer
	spec := clusterSpec(t, "rootless", image)
	ready := fixtures.StandinReady()
	c := provisioners.New(t, spec, provisioners.WithCaches(caches), provisioners.WithReadiness(ready), provisioners.WithLogger(log.logger()))
	require.NoError(t, c.Wait(ctx), "provisioner log:\n%s", log.String())

	want, err := caches.Mirrors(hostIP)
	require.NoError(t, err)
	assert.Equal(t, want, c.Plan().Mirrors, "nodes are given the host's primary address")
	sums := ready.Summaries()
	require.Len(t, sums, 2)
	var nodeBytes int64
	for node, s := range sums {
		assert.Equal(t, s.Wanted, s.Images, node)
		assert.Empty(t, s.Fallbacks, "%s fell back to a registry", node)
		assert.Empty(t, s.Failures, node)
		assert.Equal(t, ups.PullSize(), s.Bytes, node)
		nodeBytes += s.Bytes
	}
	// Every node arrives from the host's address: one line stands for them.
	pulls := c.Pulls()
	require.Len(t, pulls, 3)
	all := pulls[2]
	assert.Equal(t, provisioners.AllNodesNatted, all.Node)
	assert.Equal(t, hostIP, all.Addr)
	assert.Equal(t, nodeBytes, all.Caches.ServedBytes, "the host-address line holds every byte the nodes received")
	for _, p := range pulls[:2] {
		assert.Zero(t, p.Caches.Requests, "%s: nothing arrives from a node's own address", p.Node)
		require.NotNil(t, p.Report, p.Node)
		assert.Equal(t, ups.PullSize(), p.Report.Bytes, p.Node)
	}
	total := caches.Total()
	assert.Equal(t, nodeBytes, total.ServedBytes, "the caches served every byte the nodes received")
	assert.Equal(t, ups.Total().BytesSent, total.UpstreamBytes, "and fetched every byte the upstreams sent")
	assert.Equal(t, ups.UniquePullSize(), ups.Total().ContentBytes, "each blob once")

	require.NoError(t, c.Destroy(ctx))
	assertNothingLeft(t, cli, spec)
}
