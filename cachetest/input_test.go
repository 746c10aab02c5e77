package cachetest_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
)

func TestBadInputIsNamed(t *testing.T) {
	good := cache.Upstream{Host: "registry.test", URL: "http://127.0.0.1:1"}
	readOnly := filepath.Join(t.TempDir(), "ro")
	require.NoError(t, os.MkdirAll(readOnly, 0o500))
	notADir := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(notADir, nil, 0o600))
	withPort := func(p int) cache.Upstream { u := good; u.Port = p; return u }

	for _, tc := range []struct {
		name string
		opts []cache.Option
		want string
	}{
		{"malformed URL", []cache.Option{cache.WithUpstreams(cache.Upstream{Host: "docker.io", URL: "registry-1.docker.io"})}, `URL "registry-1.docker.io"`},
		{"URL with credentials", []cache.Option{cache.WithUpstreams(cache.Upstream{Host: "docker.io", URL: "https://u:p@registry-1.docker.io"})}, "carries credentials"},
		{"empty host", []cache.Option{cache.WithUpstreams(cache.Upstream{URL: "https://quay.io"})}, `upstream host ""`},
		{"duplicate host", []cache.Option{cache.WithUpstreams(good, good)}, `"registry.test" is listed twice`},
		{"no upstreams", []cache.Option{cache.WithUpstreams()}, "no upstreams"},
		{"port out of range", []cache.Option{cache.WithUpstreams(withPort(70000)), cache.WithFixedPorts()}, "port 70000: want 1 to 65535"},
		{"port zero with fixed ports", []cache.Option{cache.WithUpstreams(withPort(0)), cache.WithFixedPorts()}, "port 0: want 1 to 65535"},
		{"address not on this host", []cache.Option{cache.WithUpstreams(good), cache.WithListenAddrs("192.0.2.55")}, "192.0.2.55"},
		{"listen address not an IP", []cache.Option{cache.WithUpstreams(good), cache.WithListenAddrs("localhost")}, `listen address "localhost"`},
		{"storage not a directory", []cache.Option{cache.WithUpstreams(good), cache.WithStorageDir(notADir)}, "is not writable"},
		{"bad client network", []cache.Option{cache.WithUpstreams(good), cache.WithAllowedClients("10.0.0.0/33")}, `"10.0.0.0/33"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := append([]cache.Option{cache.WithStorageDir(t.TempDir())}, tc.opts...)
			set, err := cache.Start(testCtx(t), opts...)
			if set != nil {
				set.Close()
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	t.Run("read-only storage", func(t *testing.T) {
		readOnlyDir(t, readOnly)
		_, err := cache.Start(testCtx(t), cache.WithUpstreams(good), cache.WithStorageDir(readOnly))
		assert.ErrorContains(t, err, "is not writable")
		assert.ErrorContains(t, err, readOnly)
	})
	_, err := cache.Start(testCtx(t), cache.WithUpstreams(good), cache.WithListenAddrs("192.0.2.55"), cache.WithStorageDir(t.TempDir()))
	assert.ErrorIs(t, err, cache.ErrAddrNotLocal)
}

func TestMirrors(t *testing.T) {
	set := cachetest.New(t, cache.WithUpstreams(
		cache.Upstream{Host: "docker.io", URL: "http://127.0.0.1:1"},
		cache.Upstream{Host: "ghcr.io", URL: "http://127.0.0.1:2"},
	), cache.WithListenAddrs("127.0.0.1"))
	m, err := set.Mirrors("127.0.0.1")
	require.NoError(t, err)
	assert.Equal(t, map[string]string{
		"docker.io": set.Cache("docker.io").Endpoint(),
		"ghcr.io":   set.Cache("ghcr.io").Endpoint(),
	}, m)
	flags, err := set.MirrorFlags("127.0.0.1")
	require.NoError(t, err)
	assert.Equal(t, []string{"docker.io=" + m["docker.io"], "ghcr.io=" + m["ghcr.io"]}, flags)

	_, err = set.Mirrors("172.31.255.1")
	assert.ErrorContains(t, err, "listen on [127.0.0.1] only")
	_, err = set.Mirrors("not-an-ip")
	assert.ErrorContains(t, err, `mirror address "not-an-ip"`)
}

func TestBridgeAddresses(t *testing.T) {
	for cidr, want := range map[string]string{"10.5.0.0/24": "10.5.0.1", "10.77.3.0/24": "10.77.3.1", "172.20.0.0/16": "172.20.0.1", "10.9.8.7/24": "10.9.8.1"} {
		got, err := cache.GatewayIP(cidr)
		require.NoError(t, err)
		assert.Equal(t, want, got, cidr)
	}
	for _, bad := range []string{"fd00::/64", "10.5.0.0/30", "10.5.0.0", "nonsense"} {
		_, err := cache.GatewayIP(bad)
		assert.ErrorContains(t, err, bad)
	}
	_, err := cache.InterfaceIP("pt-no-such0")
	assert.ErrorIs(t, err, cache.ErrNoBridge)
	assert.ErrorContains(t, err, "pt-no-such0")
	lo, err := cache.InterfaceIP("lo")
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", lo)
}

func TestListenWithoutLoopback(t *testing.T) {
	ip, err := cache.DockerBridgeIP()
	if err != nil {
		skipUnlessCI(t, "no docker0 to listen on: %v", err)
	}
	set := cachetest.New(t, cache.WithUpstreams(cache.Upstream{Host: "registry.test", URL: "http://127.0.0.1:9"}),
		cache.WithListenAddrs(ip))
	assert.Equal(t, ip, strings.Split(set.Cache("registry.test").Addr(), ":")[0])
	_, err = set.Mirrors("127.0.0.1")
	assert.Error(t, err, "loopback is not a listen address here")
}

// skipUnlessCI skips for a missing piece of the machine, except under
// CI=true, where CI has set the machine up and a skip would hide a failure.
func skipUnlessCI(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true: "+format, args...)
	}
	t.Skipf(format, args...)
}

// readOnlyDir makes dir unwritable for this process: its mode does for a
// user; root writes through any mode, so for root dir becomes a read-only
// tmpfs until the test ends.
func readOnlyDir(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		return // made 0500
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_RDONLY, "size=64k"); err != nil {
		msg := fmt.Sprintf("root writes through any mode, and mounting a read-only tmpfs on %s failed: %v", dir, err)
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: " + msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting the read-only tmpfs on %s: %v", dir, err)
		}
	})
}
