package dockerenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// helloTag is this process's: test binaries of two checkouts run at once
// must not build, inspect and remove one tag between them.
var helloTag = fmt.Sprintf("pullthrough.local/hello:test-%d", os.Getpid())

const (
	testLabel  = "dev.pullthrough.test"
	capSysAdm  = 21
	capSysRsrc = 24
)

// testLabelValue ties the test's containers and networks to this process, so
// a cleanup never touches another package's or another run's resources.
var testLabelValue = fmt.Sprintf("dockerenv-%d", os.Getpid())

func TestClientUnavailable(t *testing.T) {
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(t.TempDir(), "no-daemon.sock"))
	_, err := Client(t.Context())
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrUnavailable)
	assert.Contains(t, err.Error(), "no-daemon.sock")
}

func TestRenderDockerfile(t *testing.T) {
	got, err := renderDockerfile("standin", map[string]string{"B": `a "$HOME" \ b`, "A": "1"})
	require.NoError(t, err)
	assert.Equal(t, "FROM scratch\nCOPY standin /standin\nENV A=\"1\"\nENV B=\"a \\\"\\$HOME\\\" \\\\ b\"\nENTRYPOINT [\"/standin\"]\n", string(got))

	_, err = renderDockerfile("x", map[string]string{"A B": "1"})
	assert.Error(t, err)
	_, err = renderDockerfile("x", map[string]string{"A": "1\n2"})
	assert.Error(t, err)
}

func TestDrainBuildStream(t *testing.T) {
	var log bytes.Buffer
	ok := `{"stream":"Step 1/3 : FROM scratch\n"}` + "\n" + `{"aux":{"ID":"sha256:x"}}` + "\n" + `{"stream":"Successfully tagged x\n"}`
	require.NoError(t, drainBuildStream(strings.NewReader(ok), &log))
	assert.Contains(t, log.String(), "Successfully tagged x")

	bad := `{"stream":"Step 2/3 : COPY x /x\n"}` + "\n" + `{"errorDetail":{"message":"COPY failed: no such file"},"error":"COPY failed: no such file"}`
	err := drainBuildStream(strings.NewReader(bad), &log)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "COPY failed: no such file")

	legacy := `{"error":"old daemon failure"}`
	err = drainBuildStream(strings.NewReader(legacy), &log)
	require.ErrorContains(t, err, "old daemon failure")
}

// cleanupCtx is for t.Cleanup: the test's own context is already cancelled
// by the time cleanups run.
func cleanupCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// buildHello builds testdata/hello under helloTag and removes the image when
// the test ends.
func buildHello(t *testing.T, cli *client.Client) string {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		assert.NoError(t, RemoveImage(ctx, cli, helloTag))
	})
	var log bytes.Buffer
	err := BuildGoImage(t.Context(), cli, BuildOptions{
		Package: "./testdata/hello",
		Tag:     helloTag,
		Env:     map[string]string{"HELLO_GREETING": "hi $there"},
		Labels:  map[string]string{testLabel: testLabelValue},
	}, &log)
	require.NoError(t, err, "build output:\n%s", log.String())
	return log.String()
}

// runHello runs the hello image to its end and returns its output.
func runHello(t *testing.T, cli *client.Client, name string, hc *container.HostConfig, nc *network.NetworkingConfig) string {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		assert.NoError(t, RemoveContainersByLabel(ctx, cli, testLabel, testLabelValue))
	})
	ctx := t.Context()
	created, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: name,
		Config: &container.Config{
			Image:  helloTag,
			Labels: map[string]string{testLabel: testLabelValue},
		},
		HostConfig:       hc,
		NetworkingConfig: nc,
	})
	require.NoError(t, err)
	_, err = cli.ContainerStart(ctx, created.ID, client.ContainerStartOptions{})
	require.NoError(t, err)

	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	code, err := WaitExit(waitCtx, cli, created.ID)
	require.NoError(t, err)

	logs, err := ContainerLogs(ctx, cli, created.ID)
	require.NoError(t, err)
	require.Zero(t, code, "hello exited with %d; output:\n%s", code, logs)
	return logs
}

func TestHelloOnNetwork(t *testing.T) {
	cli := Require(t)
	buildHello(t, cli)

	netName := fmt.Sprintf("pullthrough-dockerenv-%d", os.Getpid())
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		assert.NoError(t, RemoveNetworksByLabel(ctx, cli, testLabel, testLabelValue))
	})
	created, err := cli.NetworkCreate(t.Context(), netName, client.NetworkCreateOptions{
		Driver: "bridge",
		Labels: map[string]string{testLabel: testLabelValue},
	})
	require.NoError(t, err)
	inspected, err := cli.NetworkInspect(t.Context(), created.ID, client.NetworkInspectOptions{})
	require.NoError(t, err)
	require.NotEmpty(t, inspected.Network.IPAM.Config, "network has no subnet")
	subnet := inspected.Network.IPAM.Config[0].Subnet

	logs := runHello(t, cli, netName+"-hello",
		&container.HostConfig{NetworkMode: container.NetworkMode(netName)},
		&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{netName: {}}})

	assert.Contains(t, logs, "hello from pullthrough\n")
	assert.Contains(t, logs, "greeting-env=hi $there\n", "ENV must be taken literally")
	assert.Contains(t, logs, "bye on stderr\n", "stderr must be demultiplexed too")
	assert.NotContains(t, logs, "\x01\x00\x00\x00", "a stream header leaked into the logs")

	var onNet bool
	for line := range strings.SplitSeq(logs, "\n") {
		if v, ok := strings.CutPrefix(line, "addr="); ok {
			if a, err := netip.ParseAddr(v); err == nil && subnet.Contains(a) {
				onNet = true
			}
		}
	}
	assert.True(t, onNet, "no address in %s in the container's output:\n%s", subnet, logs)
}

// TestPrivileged proves that a --privileged container starts on this machine,
// as Talos's docker provisioner needs: in a sandbox whose bounding set lacks
// a capability this works only through runc-capfilter.
func TestPrivileged(t *testing.T) {
	cli := Require(t)
	buildHello(t, cli)

	logs := runHello(t, cli, fmt.Sprintf("pullthrough-dockerenv-%d-privileged", os.Getpid()),
		&container.HostConfig{Privileged: true}, nil)
	require.Contains(t, logs, "hello from pullthrough\n")

	var capEff uint64
	for line := range strings.SplitSeq(logs, "\n") {
		if v, ok := strings.CutPrefix(line, "capeff="); ok {
			n, err := strconv.ParseUint(v, 16, 64)
			require.NoError(t, err)
			capEff = n
		}
	}
	assert.NotZero(t, capEff&(1<<capSysAdm), "privileged container lacks CAP_SYS_ADMIN: CapEff=%x", capEff)
	if own, err := ownBoundingSet(); err == nil && own&(1<<capSysRsrc) == 0 {
		t.Logf("this machine's bounding set lacks CAP_SYS_RESOURCE; the container ran without it (CapEff=%x)", capEff)
	}
}

func ownBoundingSet() (uint64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapBnd line")
}

func TestBuildGoImageSkipsUpToDate(t *testing.T) {
	cli := Require(t)
	buildHello(t, cli)

	second := buildHello(t, cli)
	assert.Contains(t, second, "is up to date")

	inspected, err := cli.ImageInspect(t.Context(), helloTag)
	require.NoError(t, err)
	require.NotNil(t, inspected.Config)
	assert.Equal(t, testLabelValue, inspected.Config.Labels[testLabel])
	assert.Len(t, inspected.Config.Labels[HashLabel], 64)
}

func TestBuildGoImageReportsFailure(t *testing.T) {
	cli := Require(t)
	err := BuildGoImage(t.Context(), cli, BuildOptions{
		Package: "./testdata/does-not-exist",
		Tag:     "pullthrough.local/broken:test",
	}, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `"pullthrough.local/broken:test"`)
}
