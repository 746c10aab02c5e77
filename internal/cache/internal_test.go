package cache

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestParseRoute(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for path, want := range map[string]route{
		"/v2/":                                  {},
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

func TestAccepts(t *testing.T) {
	const oci = "application/vnd.oci.image.manifest.v1+json"
	assert.True(t, accepts([]string{"application/vnd.docker.distribution.manifest.v2+json, " + oci + ";q=0.9"}, oci))
	assert.True(t, accepts([]string{"application/json", oci}, oci))
	assert.True(t, accepts([]string{"*/*"}, oci))
	assert.False(t, accepts([]string{"application/vnd.docker.distribution.manifest.v2+json"}, oci))
	assert.False(t, accepts(nil, oci), "no Accept: let distribution decide")
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

func TestTagBookTTL(t *testing.T) {
	b := openTagBook(t.TempDir())
	now := time.Unix(1_700_000_000, 0)
	assert.False(t, b.fresh("pause:3.10.1", time.Hour, now))
	assert.NoError(t, b.mark("pause:3.10.1", now))
	assert.True(t, b.fresh("pause:3.10.1", time.Hour, now.Add(59*time.Minute)))
	assert.False(t, b.fresh("pause:3.10.1", time.Hour, now.Add(61*time.Minute)))
	assert.False(t, b.fresh("pause:3.10.1", -1, now), "a negative TTL always revalidates")
	again := openTagBook(b.path[:len(b.path)-len(tagBookFile)])
	assert.True(t, again.fresh("pause:3.10.1", time.Hour, now), "the book survives a restart")
}
