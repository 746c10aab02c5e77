package benchmarks

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/pullthrough/pullthrough/internal/testnet"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/provisioners"
)

// The smoke tests run each benchmark body once at a tiny scale, so that
// `go test ./...` catches breakage without timing anything.
func tinyKnobs() benchKnobs {
	k := defaultKnobs()
	k.Mbits, k.Latency, k.Scale = 0, 0, 0.001
	return k
}

func TestPullBodiesSmoke(t *testing.T) {
	env := newBenchEnv(t, tinyKnobs())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	direct, err := env.PullDirect(ctx)
	require.NoError(t, err)
	assert.Equal(t, env.Upstreams.PullSize(), direct.UpstreamContentBytes, "a node pulls every image whole")

	set := env.NewCaches(t)
	cold, err := env.PullThrough(ctx, set)
	require.NoError(t, err)
	assert.Equal(t, env.Upstreams.UniquePullSize(), cold.UpstreamContentBytes, "a cold pull fetches each blob once")
	assert.Equal(t, cold.UpstreamBytes, set.Total().UpstreamBytes, "cache and upstream counters agree")
	warm, err := env.PullThrough(ctx, set)
	require.NoError(t, err)
	assert.Zero(t, warm.UpstreamBytes, "warm upstream bytes")
	assert.Zero(t, warm.UpstreamRequests, "warm upstream requests")
	assert.Equal(t, cold.Images, warm.Images)
}

func TestBootBodySmoke(t *testing.T) {
	env := newBenchEnv(t, tinyKnobs())
	image := env.NodeImage(t, tbLogger(t)) // skips without Docker, fails under CI=true
	set := env.NewCaches(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	spec := bootSpecT(t, image)
	cold, err := env.Boot(ctx, set, spec, tbLogger(t))
	require.NoError(t, err)
	assert.Equal(t, 2*env.Upstreams.PullSize(), set.Total().ServedBytes, "two nodes pulled the set through the caches")
	assert.Equal(t, env.Upstreams.UniquePullSize(), cold.UpstreamContentBytes, "each blob fetched once for two nodes")
	assert.Equal(t, cold.UpstreamBytes, set.Total().UpstreamBytes, "cache and upstream counters agree")
	spec.Name += "-warm"
	warm, err := env.Boot(ctx, set, spec, tbLogger(t))
	require.NoError(t, err)
	assert.Zero(t, warm.UpstreamRequests, "a warm boot asked upstream")
}

func bootSpecT(t *testing.T, image string) (s provisioners.Spec) {
	return provisioners.Spec{
		Name: fmt.Sprintf("pt-smoke-%d", os.Getpid()), ControlPlanes: 1, Workers: 1, Image: image,
		CIDR: testnet.Subnet(t, "10.92").String(), StateDir: t.TempDir(),
	}
}
