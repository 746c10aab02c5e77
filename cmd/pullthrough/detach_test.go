package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
)

// detachWorld is what a detach test works on: fixtures' upstreams, a
// storage directory, a container name, and the flags naming upstreams and
// storage (common). The container is removed when the test ends, whatever
// it did.
func detachWorld(t *testing.T, cli *client.Client, namePrefix string) (ups *fixtures.Upstreams, storage, name string, common []string) {
	t.Helper()
	ownRunDir(t) // this test's containers and records, not another test binary's
	ups = fixtures.NewTalosUpstreams(t, "v1.13.0", fixtures.WithScale(0.002), fixtures.Unthrottled())
	storage = t.TempDir()
	name = fmt.Sprintf("%s-%d", namePrefix, os.Getpid())
	common = []string{"--storage", storage}
	for _, u := range ups.Upstreams() {
		common = append(common, "--upstream", u.Host()+"="+u.URL())
	}
	t.Cleanup(func() {
		_, _ = cli.ContainerRemove(context.Background(), name, client.ContainerRemoveOptions{Force: true})
	})
	return ups, storage, name, common
}

// upDetached runs `up --detach` with args and common on host ports drawn
// by onDrawnPorts, and requires it to succeed. It returns what up printed
// and withPorts, the --ports-from flag with common, for the commands that
// follow.
func upDetached(t *testing.T, n int, common []string, args ...string) (stdout string, withPorts []string) {
	t.Helper()
	var r result
	base, _ := onDrawnPorts(t, n, func(base int) string {
		r = cli2(t, append(append([]string{"up", "--detach", "--ports-from", fmt.Sprint(base)}, args...), common...)...)
		return r.stdout + r.stderr
	})
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	return r.stdout, append([]string{"--ports-from", fmt.Sprint(base)}, common...)
}

func TestDetachedCachesSurviveRestartAndDownCleansUp(t *testing.T) {
	cli := dockerenv.Require(t)
	ctx := t.Context()
	ups, storage, name, common := detachWorld(t, cli, "pullthrough-test")

	printed, withPorts := upDetached(t, len(ups.Upstreams()), common, "--name", name, "--bridge", "127.0.0.1")
	assert.Contains(t, printed, "talosctl cluster create docker")
	assert.Contains(t, printed, "pullthrough down --name "+name, "the hint acts on this container")
	r := cli2(t, "status") // no flags: found by its label, whatever its name and ports
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, storage, "status with no flags finds the detached caches")
	r = cli2(t, append([]string{"up", "--detach", "--name", name}, withPorts...)...)
	assert.Equal(t, 1, r.code, "a second detach names the running one")
	assert.Contains(t, r.stderr, "already running detached")

	r = cli2(t, append([]string{"prefetch", "--talos", "v1.13.0"}, common...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	waitStatus(t, withPorts, len(ups.Upstreams()))

	// Restarted (as after a reboot or a daemon restart): back, and warm.
	_, err := cli.ContainerRestart(ctx, name, client.ContainerRestartOptions{})
	require.NoError(t, err)
	waitStatus(t, withPorts, len(ups.Upstreams()))
	ups.ResetStats()
	pullThroughRunning(t, withPorts, ups)
	assert.Zero(t, ups.Total().BytesSent, "warm after a restart: the detached caches asked upstream")

	r = cli2(t, "down", "--name", name)
	require.Equal(t, 0, r.code, r.stderr)
	_, err = cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	assert.Error(t, err, "container left after down")
	r = cli2(t, append([]string{"verify", "--talos", "v1.13.0"}, common...)...)
	assert.Equal(t, 0, r.code, "down keeps what the caches stored: %s%s", r.stdout, r.stderr)
	assert.Contains(t, r.stdout, "are fully cached")

	r = cli2(t, append([]string{"up", "--detach", "--name", name, "--bridge", "127.0.0.1"}, withPorts...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	assert.Contains(t, r.stdout, "pullthrough down --name "+name, "the hint acts on this container")
	mine := filepath.Join(storage, "notes.txt")
	require.NoError(t, os.WriteFile(mine, []byte("mine"), 0o644))
	r = cli2(t, "down", "--name", name, "--purge")
	require.Equal(t, 0, r.code, r.stderr)
	dirs, err := cache.StorageDirs(storage)
	require.NoError(t, err)
	assert.Empty(t, dirs, "down --purge drops what the caches stored")
	_, err = os.Stat(mine)
	assert.NoError(t, err, "down --purge keeps a file of the user's under the storage")
}

func TestDetachNeverTouchesAContainerItDidNotMake(t *testing.T) {
	cli := dockerenv.Require(t)
	ctx := t.Context()
	name := fmt.Sprintf("pullthrough-foreign-%d", os.Getpid())
	// Someone else's container under the name, from an image of this
	// project's that is not pullthrough's.
	image, err := dockerenv.BuildToolImage(ctx, cli, "github.com/pullthrough/pullthrough/internal/tools/mirrorprobe",
		"pullthrough.local/mirror-probe", "mirrorprobe", nil)
	require.NoError(t, err)
	_, err = cli.ContainerCreate(ctx, client.ContainerCreateOptions{Name: name, Config: &container.Config{Image: image}})
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = cli.ContainerRemove(context.Background(), name, client.ContainerRemoveOptions{Force: true})
	})
	r := cli2(t, "up", "--detach", "--name", name, "--storage", t.TempDir())
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "was not made by pullthrough")
	r = cli2(t, "down", "--name", name)
	assert.Equal(t, 1, r.code)
	_, err = cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	assert.NoError(t, err, "the foreign container is still there")
}

func cli2(t *testing.T, args ...string) result { t.Helper(); return cli(t, "", args...) }

func waitStatus(t *testing.T, withPorts []string, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		r := cli2(t, append([]string{"status"}, withPorts...)...)
		return r.code == 0 && strings.Count(r.stdout, "online") == n
	}, 30*time.Second, 200*time.Millisecond)
}

// envRestartDockerd allows TestDetachedComesBackWithTheDockerDaemon to stop
// and start the Docker daemon, which disturbs every other test using it:
// .ci/run sets it for that test alone, after the suite.
const envRestartDockerd = "PULLTHROUGH_TEST_RESTART_DOCKERD"

// The guide's containers come back with the Docker daemon (--restart
// always); so must `up --detach`. The daemon is the one scripts/docker-up
// started: the test stops it with SIGTERM and starts it again with the same
// script.
func TestDetachedComesBackWithTheDockerDaemon(t *testing.T) {
	if os.Getenv(envRestartDockerd) != "1" {
		t.Skipf("restarts the Docker daemon, which would break the other tests running beside it: set %s=1 to run it alone (.ci/run does, after the suite)", envRestartDockerd)
	}
	cli := dockerenv.Require(t)
	ups, _, name, common := detachWorld(t, cli, "pullthrough-daemon")

	_, withPorts := upDetached(t, len(ups.Upstreams()), common, "--name", name, "--bridge", "127.0.0.1")
	r := cli2(t, append([]string{"prefetch", "--talos", "v1.13.0"}, common...)...)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)

	restartDockerd(t)
	waitStatus(t, withPorts, len(ups.Upstreams()))
	ups.ResetStats()
	pullThroughRunning(t, withPorts, ups)
	assert.Zero(t, ups.Total().BytesSent, "warm after the daemon came back: the detached caches asked upstream")
}

func restartDockerd(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile("/var/run/docker.pid")
	require.NoError(t, err, "no dockerd pid file: this test restarts only a daemon scripts/docker-up started")
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(pid, syscall.SIGTERM))
	require.Eventually(t, func() bool {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		// Gone, or a zombie its parent has not reaped yet.
		return err != nil || strings.Contains(string(st), ") Z ")
	}, 2*time.Minute, 100*time.Millisecond, "dockerd (pid %d) did not exit", pid)
	up := exec.Command("bash", filepath.Join("..", "..", "scripts", "docker-up"))
	out, err := up.CombinedOutput()
	require.NoError(t, err, "starting dockerd again: %s", out)
}

// pullThroughRunning pulls every image of ups, whole (linux/amd64), through
// the caches `status` finds on the given ports: the detached container's.
func pullThroughRunning(t *testing.T, withPorts []string, ups *fixtures.Upstreams) {
	t.Helper()
	r := cli2(t, append([]string{"status", "--json"}, withPorts...)...)
	require.Equal(t, 0, r.code, r.stderr)
	var found []running
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &found))
	addr := map[string]string{}
	for _, c := range found {
		addr[c.Host] = c.Addr
	}
	for _, img := range ups.Images() {
		a, ok := addr[img.Registry]
		require.True(t, ok, "no running cache for %s", img.Registry)
		ref, err := name.ParseReference(a+"/"+img.Repository+":"+img.Tag, name.Insecure)
		require.NoError(t, err)
		im, err := remote.Image(ref, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}), remote.WithContext(t.Context()))
		require.NoError(t, err, img.Ref())
		layers, err := im.Layers()
		require.NoError(t, err)
		for _, l := range layers {
			rc, err := l.Compressed() // digest checked at EOF
			require.NoError(t, err)
			_, err = io.Copy(io.Discard, rc)
			rc.Close()
			require.NoError(t, err, img.Ref())
		}
	}
}

// A detached up whose caches cannot start (a port held by another program)
// fails naming the port, and leaves no container behind for restart:
// always to start again and again.
func TestDetachThatCannotStartLeavesNoContainer(t *testing.T) {
	cli := dockerenv.Require(t)
	ups, storage, name, _ := detachWorld(t, cli, "pullthrough-taken")
	held, err := net.Listen("tcp", "0.0.0.0:0")
	require.NoError(t, err)
	defer held.Close()
	port := held.Addr().(*net.TCPAddr).Port
	u := ups.Upstreams()[0]
	r := cli2(t, "up", "--detach", "--name", name, "--bridge", "127.0.0.1", "--storage", storage,
		"--upstream", u.Host()+"="+u.URL(), "--ports-from", fmt.Sprint(port))
	assert.Equal(t, 1, r.code, r.stdout+r.stderr)
	assert.Contains(t, r.stderr, fmt.Sprintf("port %d", port))
	assert.Contains(t, r.stderr, cache.ErrPortInUse.Error())
	assert.Contains(t, r.stderr, "the container was removed")
	_, err = cli.ContainerInspect(t.Context(), name, client.ContainerInspectOptions{})
	assert.Error(t, err, "container %s is left after a failed detach", name)
}
