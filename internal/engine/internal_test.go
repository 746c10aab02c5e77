package engine

import (
	"context"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestParseRoute(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for path, want := range map[string]route{
		"/v2/":                                  {kind: kindBase},
		"/v2/pause/manifests/3.10.1":            {kind: kindManifest, name: "pause", ref: "3.10.1"},
		"/v2/coredns/coredns/manifests/v1.14.2": {kind: kindManifest, name: "coredns/coredns", ref: "v1.14.2"},
		"/v2/siderolabs/kubelet/blobs/" + d:     {kind: kindBlob, name: "siderolabs/kubelet", ref: d},
		"/v2/a/blobs/uploads/":                  {},
		"/v2/_catalog":                          {},
		"/healthz":                              {},
		"/v2/manifests/x/blobs/" + d:            {kind: kindBlob, name: "manifests/x", ref: d},
	} {
		assert.Equal(t, want, parseRoute(path), path)
	}
	assert.True(t, route{kind: kindManifest, ref: d}.isDigest())
	assert.False(t, route{kind: kindManifest, ref: "v1"}.isDigest())
}

func TestAccessPolicy(t *testing.T) {
	bridges := func() []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24")} }
	p := &AccessPolicy{bridges: bridges, Allow: []netip.Prefix{netip.MustParsePrefix("192.168.5.0/24")}}
	for addr, want := range map[string]bool{
		"127.0.0.1:5000":  true,
		"[::1]:5000":      true,
		"10.77.0.2:41000": true,
		"192.168.5.9:1":   true,
		"10.78.0.2:41000": false,
		"203.0.113.9:80":  false,
		"garbage":         false,
	} {
		assert.Equal(t, want, p.Allowed(addr), addr)
	}
	assert.True(t, (&AccessPolicy{Open: true}).Allowed("203.0.113.9:80"))
}

func TestNodeBridgeNames(t *testing.T) {
	for name, want := range map[string]bool{
		"docker0": true, "br-0123456789ab": true, "talos1a2b3c4d": true,
		"br0": false, "virbr0": false, "br-lan": false, "eth0": false, "talos": false,
	} {
		assert.Equal(t, want, nodeBridgeRE.MatchString(name), name)
	}
}

func TestRouteCheck(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, c := range []struct {
		r    route
		code string
	}{
		{route{kind: kindManifest, name: "library/alpine", ref: "3.20"}, ""},
		{route{kind: kindManifest, name: "a/b", ref: d}, ""},
		{route{kind: kindBlob, name: "a", ref: d}, ""},
		{route{kind: kindManifest, name: strings.Repeat("a", 256), ref: "v1"}, "NAME_INVALID"},
		{route{kind: kindManifest, name: "Upper", ref: "v1"}, "NAME_INVALID"},
		{route{kind: kindManifest, name: "a/../b", ref: "v1"}, "NAME_INVALID"},
		{route{kind: kindManifest, name: "_x", ref: "v1"}, "NAME_INVALID"},
		{route{kind: kindManifest, name: "a", ref: ".hidden"}, "MANIFEST_INVALID"},
		{route{kind: kindManifest, name: "a", ref: "sha256:xyz"}, "DIGEST_INVALID"},
		{route{kind: kindBlob, name: "a", ref: "v1"}, "DIGEST_INVALID"},
		{route{kind: kindBlob, name: "a", ref: "sha512:00"}, "DIGEST_INVALID"},
	} {
		code, _, ok := c.r.check()
		assert.Equal(t, c.code, code, c.r.name[:min(len(c.r.name), 20)]+" "+c.r.ref)
		assert.Equal(t, c.code == "", ok)
	}
}

func TestOldLayoutDroppedOnlyInCachetestDirs(t *testing.T) {
	remote, _ := url.Parse("http://127.0.0.1:1")
	for dir, dropped := range map[string]bool{"registry.k8s.io-0a1b2c3d": true, "var-lib-registry": false} {
		root := filepath.Join(t.TempDir(), dir)
		old := filepath.Join(root, "docker", "registry", "v2", "blobs")
		assert.NoError(t, os.MkdirAll(old, 0o755))
		c, err := New(context.Background(), Config{Host: "r.test", Remote: remote, StorageDir: root})
		if !assert.NoError(t, err) {
			continue
		}
		c.Close()
		_, statErr := os.Stat(old)
		assert.Equal(t, dropped, os.IsNotExist(statErr), dir)
	}
}

// An endpoint's back-off starts at a second, doubles with each failure up
// to its cap, and a success ends it.
func TestEndpointBackOffDoublesToItsCapAndASuccessEndsIt(t *testing.T) {
	e := newEndpoint(&url.URL{Scheme: "http", Host: "tier.test:5000"})
	assert.False(t, e.isDown())
	var got []time.Duration
	for range 7 {
		e.markDown()
		got = append(got, time.Duration(e.backoff.Load()))
		assert.True(t, e.isDown())
		left := time.Until(time.Unix(0, e.downUntil.Load()))
		assert.InDelta(t, got[len(got)-1].Seconds(), left.Seconds(), 1, "down for the back-off from now")
	}
	assert.Equal(t, []time.Duration{minBackoff, 2 * minBackoff, 4 * minBackoff, 8 * minBackoff, 16 * minBackoff, maxBackoff, maxBackoff}, got)
	e.markUp()
	assert.False(t, e.isDown(), "still skipped after a success")
	e.markDown()
	assert.Equal(t, minBackoff, time.Duration(e.backoff.Load()), "the next failure after a success starts over")
}
