package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pullthrough/pullthrough/internal/testnet"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/internal/dockerenv"
)

// up --detach --network: the caches run on a cluster's own Docker network,
// and a container on that network reaches them at the subnet's last
// address (what nodes that cannot reach this host use).
func TestDetachedOnAClusterNetworkAnswersThere(t *testing.T) {
	cli := dockerenv.Require(t)
	ctx := t.Context()
	// The caches listen in the container's own network namespace: no port
	// of this host is taken, so any fixed ones do.
	_, _, name, common := detachWorld(t, cli, "pullthrough-net")
	netName := fmt.Sprintf("pt-detnet-%d", os.Getpid())
	cidr := testnet.Subnet(t, "10.86").String()
	t.Cleanup(func() {
		_, _ = cli.ContainerRemove(context.Background(), name, client.ContainerRemoveOptions{Force: true})
		_, _ = cli.NetworkRemove(context.Background(), netName, client.NetworkRemoveOptions{})
	})
	r := cli2(t, append([]string{"up", "--detach", "--name", name, "--network", netName, "--cidr", cidr, "--ports-from", "5000"}, common...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	addr := strings.TrimSuffix(cidr, "0/24") + "254"
	base := "5000"
	assert.Contains(t, r.stdout, fmt.Sprintf("'*=http://%s:%s'", addr, base), "the one-line mirror at the container's address")
	assert.Contains(t, r.stdout, "talosctl cluster create docker --name "+netName)

	// From a container on that network, as a node would ask.
	tag, err := dockerenv.BuildToolImage(ctx, cli, "github.com/pullthrough/pullthrough/internal/tools/mirrorprobe",
		"pullthrough.local/mirror-probe", "mirrorprobe", nil)
	require.NoError(t, err)
	created, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config:     &container.Config{Image: tag, Cmd: []string{"x=http://" + addr + ":" + base}},
		HostConfig: &container.HostConfig{NetworkMode: container.NetworkMode(netName)},
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = cli.ContainerRemove(context.Background(), created.ID, client.ContainerRemoveOptions{Force: true})
	})
	_, err = cli.ContainerStart(ctx, created.ID, client.ContainerStartOptions{})
	require.NoError(t, err)
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	code, err := dockerenv.WaitExit(wctx, cli, created.ID)
	require.NoError(t, err)
	logs, _ := dockerenv.ContainerLogs(ctx, cli, created.ID)
	assert.Zero(t, code, logs)
	assert.Contains(t, logs, "ok x ", "the caches answer /v2/ on the cluster's network")
}
