package provisioners_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/version"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/provisioners"
)

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Upstreams need not answer to configure a cluster: caches do not contact
// them until a node pulls.
func someCaches(t *testing.T, opts ...cache.Option) *cache.Set {
	ups := []cache.Upstream{
		{Host: "registry.k8s.io", URL: "http://127.0.0.1:9"},
		{Host: "ghcr.io", URL: "http://127.0.0.1:9"},
	}
	return cachetest.New(t, append([]cache.Option{cache.WithUpstreams(ups...)}, opts...)...)
}

func TestConfigureDockerPutsOneMirrorPerCacheInEveryNode(t *testing.T) {
	set := someCaches(t, cache.WithListenAddrs("127.0.0.1"))
	plan, err := provisioners.Configure(ctxFor(t), provisioners.Spec{
		Name: "pt-plan", ControlPlanes: 1, Workers: 2, CIDR: "10.81.0.0/24", StateDir: t.TempDir(),
	}, provisioners.WithCaches(set), provisioners.WithBridgeAddr("127.0.0.1"))
	require.NoError(t, err)
	want := map[string][]string{}
	for _, c := range set.Caches() {
		want[c.Host()] = []string{fmt.Sprintf("http://127.0.0.1:%d", c.Port())}
	}
	assert.Equal(t, []string{
		"registry.k8s.io=" + want["registry.k8s.io"][0],
		"ghcr.io=" + want["ghcr.io"][0],
	}, plan.MirrorFlags)

	mirrors, err := plan.NodeMirrors() // loads each config with Talos's configloader
	require.NoError(t, err)
	require.Len(t, mirrors, 3)
	for node, m := range mirrors {
		assert.Equal(t, want, m, node)
	}
	req := plan.Configs.ClusterRequest
	assert.Equal(t, "pt-plan", req.Name)
	assert.Equal(t, "ghcr.io/siderolabs/talos:"+provisioners.DefaultTalosVersion, req.Image)
	assert.Equal(t, "10.81.0.1", req.Network.GatewayAddrs[0].String())

	cfgs, err := plan.NodeConfigs()
	require.NoError(t, err)
	for node, b := range cfgs {
		assert.Equal(t, 2, strings.Count(string(b), "kind: RegistryMirrorConfig"), node)
	}
}

func TestConfigureDockerUsesDocker0(t *testing.T) {
	bridge, err := cache.DockerBridgeIP()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and no docker0: %v", err)
		}
		t.Skipf("no docker0 on this machine: %v", err)
	}
	set := someCaches(t)
	plan, err := provisioners.Configure(ctxFor(t), provisioners.Spec{Name: "pt-plan-d0", ControlPlanes: 1, StateDir: t.TempDir()},
		provisioners.WithCaches(set))
	require.NoError(t, err)
	assert.Equal(t, fmt.Sprintf("http://%s:%d", bridge, set.Cache("ghcr.io").Port()), plan.Mirrors["ghcr.io"])
}

func TestConfigureQemuUsesTheClusterGateway(t *testing.T) {
	set := someCaches(t, cache.WithListenAll())
	plan, err := provisioners.Configure(ctxFor(t), provisioners.Spec{
		Name: "pt-qemu", Provisioner: provisioners.Qemu, ControlPlanes: 1, Workers: 1,
		CIDR: "10.82.7.0/24", StateDir: t.TempDir(),
		Qemu: provisioners.QemuSpec{KernelPath: "/nonexistent/vmlinuz", InitramfsPath: "/nonexistent/initramfs.xz"},
	}, provisioners.WithCaches(set))
	require.NoError(t, err)
	mirrors, err := plan.NodeMirrors()
	require.NoError(t, err)
	for node, m := range mirrors {
		assert.Equal(t, []string{fmt.Sprintf("http://10.82.7.1:%d", set.Cache("registry.k8s.io").Port())}, m["registry.k8s.io"], node)
	}
	req := plan.Configs.ClusterRequest
	assert.Equal(t, "/nonexistent/vmlinuz", req.KernelPath)
	assert.Equal(t, os.Args[0], req.SelfExecutable, "this test binary launches the VMs")
}

func TestBadSpecsAreNamed(t *testing.T) {
	ok := provisioners.Spec{Name: "pt-bad", ControlPlanes: 1, StateDir: t.TempDir()}
	for _, tc := range []struct {
		name string
		edit func(*provisioners.Spec)
		want string
	}{
		{"unknown provisioner", func(s *provisioners.Spec) { s.Provisioner = "vbox" }, `provisioner "vbox"`},
		{"zero control planes", func(s *provisioners.Spec) { s.ControlPlanes = 0 }, "control planes 0: want at least 1"},
		{"negative workers", func(s *provisioners.Spec) { s.Workers = -1 }, "workers -1"},
		{"IPv6 CIDR", func(s *provisioners.Spec) { s.CIDR = "fd00::/64" }, `cluster CIDR "fd00::/64": want an IPv4 network`},
		{"CIDR too small", func(s *provisioners.Spec) { s.CIDR = "10.83.0.0/30"; s.Workers = 3 }, `cluster CIDR "10.83.0.0/30" holds 1 nodes: want room for 4`},
		{"no name", func(s *provisioners.Spec) { s.Name = "" }, `cluster name ""`},
		{"unknown Talos version", func(s *provisioners.Spec) { s.Image = "example.test/talos:latest-and-greatest" }, `talos version "latest-and-greatest"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ok
			tc.edit(&s)
			_, err := provisioners.Configure(ctxFor(t), s)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}

	set := someCaches(t, cache.WithListenAddrs("127.0.0.1"))
	_, err := provisioners.Configure(ctxFor(t), ok, provisioners.WithCaches(set), provisioners.WithBridgeAddr("10.84.0.1"))
	assert.ErrorContains(t, err, "mirror address 10.84.0.1", "caches that nodes could not reach")
}

func TestDockerMissingIsNamed(t *testing.T) {
	t.Setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
	_, err := provisioners.Create(ctxFor(t), provisioners.Spec{Name: "pt-nodocker", ControlPlanes: 1, StateDir: t.TempDir()})
	require.ErrorIs(t, err, provisioners.ErrDockerUnavailable)
}

func TestQemuPreflightNamesEachMissingPiece(t *testing.T) {
	spec := provisioners.Spec{Name: "pt-qemu-pre", Provisioner: provisioners.Qemu, ControlPlanes: 1,
		Qemu: provisioners.QemuSpec{KernelPath: "/nonexistent/vmlinuz", CNIBinPath: []string{t.TempDir()}}}
	err := provisioners.QemuPreflight(spec)
	require.Error(t, err, "a kernel at /nonexistent/vmlinuz, no CNI plugins and no initramfs path were accepted")
	for _, want := range []string{`CNI plugin "bridge"`, "kernel /nonexistent/vmlinuz", "initramfs path"} {
		assert.Contains(t, err.Error(), want)
	}
	if _, statErr := os.Stat("/dev/kvm"); statErr != nil {
		assert.ErrorIs(t, err, provisioners.ErrKVMUnavailable)
	}
	_, err = provisioners.Create(ctxFor(t), spec)
	assert.ErrorIs(t, err, provisioners.ErrQemuPrerequisite)
}

// The test binary answers the provisioner's "qemu-launch" re-execution with
// Talos's launcher. Without a launch config on stdin, Launch fails, which
// shows the call reached it; a real VM needs KVM and Talos assets.
func TestTestBinaryServesAsQemuLauncher(t *testing.T) {
	cmd := exec.Command(os.Args[0], "qemu-launch")
	cmd.Stdin = strings.NewReader("{not a launch config")
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "launch with a broken config must fail: %s", out)
	assert.Contains(t, string(out), "qemu-launch:")
	assert.NotContains(t, string(out), "PASS", "the tests ran instead of the launcher")
}

func TestConfigureWithMirrorsAndSkipFallback(t *testing.T) {
	strict := someCaches(t, cache.WithListenAddrs("127.0.0.1"), cache.WithMode(cache.Strict))
	plan, err := provisioners.Configure(ctxFor(t), provisioners.Spec{
		Name: "pt-strict", ControlPlanes: 1, CIDR: "10.82.0.0/24", StateDir: t.TempDir(),
	}, provisioners.WithCaches(strict), provisioners.WithBridgeAddr("127.0.0.1"),
		provisioners.WithMirrors(map[string]string{"docker.io": "http://192.0.2.10:5000"}))
	require.NoError(t, err)
	cfgs, err := plan.NodeConfigs()
	require.NoError(t, err)
	for node, b := range cfgs {
		cfg, err := configloader.NewFromBytes(b)
		require.NoError(t, err, node)
		mcs := cfg.RegistryMirrorConfigs()
		require.Len(t, mcs, 3, "the set's two caches and the mirror given by hand")
		for host, mc := range mcs {
			assert.True(t, mc.SkipFallback(), "a strict set's node must not fall back to %s itself", host)
		}
		assert.Equal(t, "http://192.0.2.10:5000", mcs["docker.io"].Endpoints()[0].Endpoint())
	}
	assert.Equal(t, "docker.io=http://192.0.2.10:5000", plan.MirrorFlags[len(plan.MirrorFlags)-1])

	_, err = provisioners.Configure(ctxFor(t), provisioners.Spec{Name: "pt-bad", ControlPlanes: 1, StateDir: t.TempDir()},
		provisioners.WithMirrors(map[string]string{"docker.io": "172.17.0.1:5000"}))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `"docker.io"="172.17.0.1:5000"`)
}

// TestConfigurePrintsNothing: Talos's config bundle prints "generating PKI
// and tokens" to stderr unless told not to; no call of this package may.
// The test swaps os.Stderr and os.Stdout, so it does not run in parallel.
func TestConfigurePrintsNothing(t *testing.T) {
	printed := captureStdio(t)
	set := someCaches(t, cache.WithListenAddrs("127.0.0.1"))
	var log strings.Builder
	for _, kind := range []string{provisioners.Docker, provisioners.Qemu} {
		spec := provisioners.Spec{Name: "pt-quiet-" + kind, Provisioner: kind, ControlPlanes: 1, Workers: 1,
			CIDR: "10.84.0.0/24", StateDir: t.TempDir()}
		if kind == provisioners.Qemu {
			spec.Qemu = provisioners.QemuSpec{KernelPath: "/nonexistent/vmlinuz", InitramfsPath: "/nonexistent/initramfs.xz"}
		}
		_, err := provisioners.Configure(ctxFor(t), spec, provisioners.WithCaches(set), provisioners.WithBridgeAddr("127.0.0.1"),
			provisioners.WithLogger(slog.New(slog.NewTextHandler(&log, nil))))
		require.NoError(t, err, kind)
	}
	assert.Empty(t, printed(), "Configure wrote to stderr or stdout")
}

// captureStdio points os.Stderr and os.Stdout at a pipe until the returned
// func is called, which restores them and returns what was written. Tests
// that use it do not run in parallel.
func captureStdio(t *testing.T) (printed func() string) {
	t.Helper()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	oldErr, oldOut := os.Stderr, os.Stdout
	os.Stderr, os.Stdout = w, w
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(r)
		r.Close()
		got <- string(b)
	}()
	var once sync.Once
	var out string
	stop := func() string {
		once.Do(func() {
			os.Stderr, os.Stdout = oldErr, oldOut
			w.Close()
			out = <-got
		})
		return out
	}
	t.Cleanup(func() { stop() })
	return stop
}

// One Talos version: the constant users see is the machinery's own tag,
// the version fixtures' image lists and the stand-in node are built for.
func TestDefaultTalosVersionIsTheMachinerys(t *testing.T) {
	assert.Equal(t, version.Tag, provisioners.DefaultTalosVersion)
}
