package standin_test

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/internal/standin"
)

func TestLoadReadsImagesAndMirrorsOfAGeneratedConfig(t *testing.T) {
	cfg := genConfig(t, map[string][]string{
		"registry.k8s.io": {"http://172.17.0.1:5001", "https://mirror.example:8443/base/"},
		"ghcr.io":         {"http://172.17.0.1:5004"},
	})
	n, err := standin.LoadUserdata(userdata(cfg))
	require.NoError(t, err)

	assert.Equal(t, "controlplane", n.MachineType)
	var refs []string
	byRegistry := map[string]int{}
	for _, img := range n.Images {
		refs = append(refs, img.Ref)
		byRegistry[img.Registry]++
		assert.Equal(t, img.Registry+"/"+img.Repository+":"+img.Tag, img.Ref)
	}
	// The v1.13.0 set FACTS.md lists; it comes from images.List, not from here.
	assert.Contains(t, refs, "registry.k8s.io/pause:3.10.1")
	assert.Contains(t, refs, "ghcr.io/siderolabs/kubelet:v1.36.0")
	assert.Equal(t, map[string]int{"registry.k8s.io": 8, "ghcr.io": 2}, byRegistry)

	m, ok := n.MirrorFor("registry.k8s.io")
	require.True(t, ok)
	require.Len(t, m.Endpoints, 2)
	assert.Equal(t, "http://172.17.0.1:5001", m.Endpoints[0].URL)
	_, ok = n.MirrorFor("docker.io")
	assert.False(t, ok, "no wildcard mirror was configured")
}

func TestLoadRejectsUnusableConfigsNamingTheValue(t *testing.T) {
	good := string(genConfig(t, map[string][]string{"registry.k8s.io": {"http://172.17.0.1:5001"}}))
	withEndpoint := func(ep string) string {
		return strings.Replace(good, "url: http://172.17.0.1:5001", "url: "+ep, 1)
	}
	require.Contains(t, good, "url: http://172.17.0.1:5001", "the generated config changed shape")

	for _, tc := range []struct {
		name, userdata string
		is             error
		names          string
	}{
		{"empty", "", standin.ErrNoUserdata, "empty"},
		{"not base64", "%%%not-base64", standin.ErrNoUserdata, "base64"},
		{"no mirrors", userdata(genConfig(t, nil)), standin.ErrNoMirrors, "RegistryMirrorConfig"},
		{"ftp scheme", userdata([]byte(withEndpoint("ftp://172.17.0.1:5001"))), standin.ErrBadEndpoint, `"ftp://172.17.0.1:5001"`},
		{"no host", userdata([]byte(withEndpoint("http:///v2"))), standin.ErrBadEndpoint, `"http:///v2"`},
		{"bad port", userdata([]byte(withEndpoint("http://172.17.0.1:99999"))), standin.ErrBadEndpoint, `"http://172.17.0.1:99999"`},
		// url.Parse refuses this inside Talos's loader, whose error names it.
		{"no scheme", userdata([]byte(withEndpoint("172.17.0.1:5001"))), nil, "172.17.0.1:5001"},
		{"no config", base64.StdEncoding.EncodeToString([]byte("# nothing\n")), nil, "config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := standin.LoadUserdata(tc.userdata)
			require.Error(t, err)
			if tc.is != nil {
				assert.ErrorIs(t, err, tc.is)
			}
			assert.Contains(t, err.Error(), tc.names)
			if tc.is == standin.ErrBadEndpoint {
				assert.Contains(t, err.Error(), `"registry.k8s.io"`, "the error names the registry too")
			}
		})
	}
}

func TestMainExitsNonZeroOnABadConfigAndSaysWhy(t *testing.T) {
	var stdout, stderr bytes.Buffer
	env := map[string]string{"USERDATA": userdata(genConfig(t, nil))}
	code := standin.Main(t.Context(), func(k string) string { return env[k] }, &stdout, &stderr, standin.Options{})
	assert.Equal(t, 2, code)
	msg, ok := standin.FindLine(stderr.String(), standin.ErrorPrefix)
	require.True(t, ok, "stderr: %q", stderr.String())
	assert.Contains(t, msg, "no registry mirrors")
	assert.NotContains(t, stdout.String(), standin.SummaryPrefix)
}
