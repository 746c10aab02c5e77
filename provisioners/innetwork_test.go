package provisioners_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
	"github.com/pullthrough/pullthrough/provisioners"
)

// With this host unreachable from the cluster's network (a firewall rule on
// its subnet), caches in a container on that network serve the boot: every
// image through them, counted there, nothing around them. The same cluster
// with host caches fails before any node exists (the reach test beside).
func TestInNetworkCachesBootWhenTheHostIsUnreachable(t *testing.T) {
	cli := dockerenv.Require(t)
	// Upstreams the container reaches from the daemon's default bridge.
	ups, cu := bridgeUpstreams(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	image, err := fixtures.BuildStandinImage(ctx, cli, provisioners.DefaultTalosVersion, nil)
	require.NoError(t, err)
	spec := clusterSpec(t, "innet", image)
	rejectTCPFrom(t, spec.CIDR, "")

	var log logBuffer
	ready := fixtures.StandinReady()
	c := provisioners.New(t, spec, provisioners.WithInNetworkCaches(provisioners.InNetwork{Upstreams: cu, StorageDir: t.TempDir()}),
		provisioners.WithSingleMirror(), provisioners.WithSkipFallback(), provisioners.WithReadiness(ready), provisioners.WithLogger(log.logger()))
	require.NoError(t, c.Wait(ctx), "provisioner log:\n%s", log.String())
	box := c.CacheBox()
	require.NotNil(t, box)
	assert.Contains(t, c.Plan().Mirrors["*"], box.Addr.String(), "nodes are given the container's address on their network")

	var nodeBytes int64
	for node, s := range ready.Summaries() {
		assert.Equal(t, s.Wanted, s.Images, node)
		assert.Empty(t, s.Fallbacks, node)
		assert.Equal(t, ups.PullSize(), s.Bytes, node)
		nodeBytes += s.Bytes
	}
	stats, err := box.Stats(ctx)
	require.NoError(t, err)
	var served, upstream int64
	for _, s := range stats {
		served += s.ServedBytes
		upstream += s.UpstreamBytes
	}
	assert.Equal(t, nodeBytes, served, "the in-network caches served every byte the nodes received")
	assert.Equal(t, ups.Total().BytesSent, upstream, "and fetched every byte the upstreams sent")
	assert.Equal(t, ups.UniquePullSize(), ups.Total().ContentBytes, "each blob once")

	require.NoError(t, c.Destroy(ctx))
	assertNothingLeft(t, cli, spec)
}
