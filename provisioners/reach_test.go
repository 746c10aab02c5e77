package provisioners_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/internal/testnet"
	"github.com/pullthrough/pullthrough/provisioners"
)

// A mirror nothing answers at: the cluster is not created, and the error
// names the mirror, where it was tried from, and the fix.
func TestUnreachableMirrorFailsBeforeAnyNodeIsCreated(t *testing.T) {
	w := newStandinWorld(t)
	bridge, err := cache.DockerBridgeIP()
	require.NoError(t, err)
	// A port this test holds and never answers on: connections are refused.
	port := testnet.Refuse(t, bridge).Port()
	spec := clusterSpec(t, "unreach", w.image)
	mirror := fmt.Sprintf("http://%s:%d", bridge, port)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := provisioners.Create(ctx, spec, provisioners.WithMirrors(map[string]string{"registry.k8s.io": mirror}),
		provisioners.WithReadiness(fixtures.StandinReady()))
	if c != nil {
		_ = c.Destroy(ctx)
	}
	require.Error(t, err)
	assert.True(t, errors.Is(err, provisioners.ErrMirrorUnreachable), err.Error())
	assert.Contains(t, err.Error(), "registry.k8s.io "+mirror)
	assert.Contains(t, err.Error(), "cluster's network "+spec.Name)
	assert.Contains(t, err.Error(), "WithListenAll")
	t.Logf("failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
	assertNothingLeft(t, w.cli, spec)
}

// The host made unreachable from one cluster network by a firewall rule on
// its bridge: the caches answer from everywhere else, and the cluster is not
// created behind them.
func TestHostUnreachableFromTheClusterNetworkFailsFast(t *testing.T) {
	w := newStandinWorld(t)
	spec := clusterSpec(t, "fw", w.image)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// By the network's subnet: the bridge exists only once the cluster's
	// network does, and a network left over is removed before a create.
	rejectTCPFrom(t, spec.CIDR, "")

	set := w.caches
	c, err := provisioners.Create(ctx, spec, provisioners.WithCaches(set), provisioners.WithReadiness(fixtures.StandinReady()))
	if c != nil {
		_ = c.Destroy(ctx)
	}
	require.Error(t, err)
	assert.True(t, errors.Is(err, provisioners.ErrMirrorUnreachable), err.Error())
	assert.Contains(t, err.Error(), strconv.Itoa(set.Caches()[0].Port()))
	ctrs, lerr := w.cli.ContainerList(ctx, client.ContainerListOptions{All: true,
		Filters: make(client.Filters).Add("label", "talos.cluster.name="+spec.Name)})
	require.NoError(t, lerr)
	assert.Empty(t, ctrs.Items, "nodes were created behind an unreachable mirror")
}
