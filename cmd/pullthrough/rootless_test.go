package main

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
)

// With DOCKER_HOST naming a rootless daemon, `up` and `config` print the
// host's primary address, not docker0's (which, from that daemon's
// containers, is its own bridge), and what they print answers /v2/ from a
// container of that daemon.
func TestRootlessDaemonIsGivenAnAddressItsContainersReach(t *testing.T) {
	docker, _ := dockerenv.RequireRootless(t) // DOCKER_HOST, inherited by the commands below
	hostIP, err := cache.HostIP()
	require.NoError(t, err)
	ups := fixtures.NewTalosUpstreams(t, "v1.13.0", fixtures.WithScale(0.002), fixtures.Unthrottled())
	args := []string{"--os-ports", "--storage", t.TempDir()}
	for _, u := range ups.Upstreams() {
		args = append(args, "--upstream", u.Host()+"="+u.URL())
	}
	text := startUp(t, args...)
	require.Contains(t, text, "# Docker provisioner: nodes reach this host at its primary address (the Docker daemon at", text)
	m := regexp.MustCompile(`talosctl cluster create docker --registry-mirror '\*=(http://[^']+)'`).FindStringSubmatch(text)
	require.NotNil(t, m, text)
	assert.Equal(t, "http://"+hostIP, m[1][:len("http://"+hostIP)], "the wildcard mirror is at the host's primary address")
	assert.NotContains(t, text, "docker=http://172.17.0.1", "docker0's address is not what a rootless daemon's containers reach")

	r := cli(t, "", "config", "--format", "talosctl-docker")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "=http://"+hostIP+":", r.stdout)

	// What was printed answers from a container of the rootless daemon.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tag, err := dockerenv.BuildToolImage(ctx, docker, "github.com/pullthrough/pullthrough/internal/tools/mirrorprobe", "pullthrough.local/mirror-probe", "mirrorprobe", nil)
	require.NoError(t, err)
	created, err := docker.ContainerCreate(ctx, client.ContainerCreateOptions{Config: &container.Config{Image: tag, Cmd: []string{"wildcard=" + m[1]}}})
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = docker.ContainerRemove(context.Background(), created.ID, client.ContainerRemoveOptions{Force: true})
	})
	_, err = docker.ContainerStart(ctx, created.ID, client.ContainerStartOptions{})
	require.NoError(t, err)
	code, err := dockerenv.WaitExit(ctx, docker, created.ID)
	require.NoError(t, err)
	logs, _ := dockerenv.ContainerLogs(ctx, docker, created.ID)
	assert.Zero(t, code, logs)
	assert.Contains(t, logs, "ok wildcard "+m[1])
}
