package provisioners_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
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

// One node of a cluster cannot reach the caches (a firewall rule for its
// address alone, added before it boots) and falls back to the registries
// themselves, as containerd does. The per-node table tells the two apart
// exactly: the falling-back node got nothing from the caches and reports
// every image through fallbacks; the other got from the caches exactly the
// bytes it reports.
func TestDockerClusterPullsAreAttributedPerNodeWithOneFallingBack(t *testing.T) {
	cli := dockerenv.Require(t)
	// Upstreams a node reaches from its network: the registries a
	// falling-back node goes to.
	ups, cu := bridgeUpstreams(t)
	fallback := map[string]string{}
	for _, u := range ups.Upstreams() {
		fallback[u.Host()] = u.URL()
	}
	caches := cachetest.New(t, cache.WithUpstreams(cu...))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	image, err := fixtures.BuildStandinImageWithFallback(ctx, cli, provisioners.DefaultTalosVersion, fallback, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = dockerenv.RemoveImage(context.Background(), cli, image) })

	spec := clusterSpec(t, "fallback", image)
	// Talos numbers nodes from the gateway up, control planes first: the
	// worker is the subnet's third address.
	worker := netip.MustParsePrefix(spec.CIDR).Masked().Addr().Next().Next().Next().String()
	var ports []string
	for _, c := range caches.Caches() {
		ports = append(ports, fmt.Sprint(c.Port()))
	}
	rejectTCPFrom(t, worker, strings.Join(ports, ","))

	var log logBuffer
	ready := fixtures.StandinReady()
	c := provisioners.New(t, spec, provisioners.WithCaches(caches), provisioners.WithReadiness(ready), provisioners.WithLogger(log.logger()))
	require.NoError(t, c.Wait(ctx), "provisioner log:\n%s", log.String())

	pulls := c.Pulls()
	require.Len(t, pulls, 2)
	sums := ready.Summaries()
	var fellBack, through int
	for _, p := range pulls {
		require.NotNil(t, p.Report, p.Node)
		s := sums[p.Node]
		assert.Equal(t, s.Wanted, s.Images, "%s pulled every image", p.Node)
		if p.Addr == worker {
			fellBack++
			assert.Zero(t, p.Caches.Requests, "%s (%s) could not reach the caches", p.Node, p.Addr)
			assert.Zero(t, p.Caches.ServedBytes, p.Node)
			assert.Equal(t, len(s.Fallbacks), p.Report.Fallbacks, p.Node)
			assert.Positive(t, p.Report.Fallbacks, "%s fell back to the registries", p.Node)
			continue
		}
		through++
		assert.Equal(t, ups.PullSize(), s.Bytes, p.Node)
		assert.Equal(t, s.Bytes, p.Caches.ServedBytes, "%s (%s): bytes the caches served it", p.Node, p.Addr)
		assert.Equal(t, s.Requests, p.Caches.Requests, "%s: requests", p.Node)
		assert.Zero(t, p.Report.Fallbacks, p.Node)
	}
	assert.Equal(t, 1, fellBack, "the blocked node %s is in the table", worker)
	assert.Equal(t, 1, through)
	assert.Equal(t, ups.PullSize(), caches.Total().ServedBytes, "the caches served one node's pulls, not two")
	table := c.PullTable()
	t.Log("\n" + table)

	require.NoError(t, c.Destroy(ctx))
	assertNothingLeft(t, cli, spec)
}
