package maintest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/fixtures"
)

var upstreams *fixtures.Upstreams

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	ups, err := fixtures.StartTalosUpstreams(ctx, "v1.13.0", fixtures.WithScale(0.001), fixtures.Unthrottled())
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	upstreams = ups
	var cu []cache.Upstream
	for _, u := range ups.Upstreams() {
		cu = append(cu, cache.Upstream{Host: u.Host(), URL: u.URL()})
	}
	dir, err := os.MkdirTemp("", "pullthrough-maintest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := cachetest.Run(m, cache.WithUpstreams(cu...), cache.WithStorageDir(dir))
	ups.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestGetReturnsTheRunningSet(t *testing.T) {
	set := cachetest.Get(t)
	require.Len(t, set.Caches(), len(upstreams.Upstreams()))
	for _, img := range upstreams.Images() {
		c := set.Cache(img.Registry)
		require.NotNil(t, c, img.Registry)
		ref, err := name.ParseReference(c.Addr()+"/"+img.Repository+":"+img.Tag, name.Insecure)
		require.NoError(t, err)
		desc, err := remote.Head(ref)
		require.NoError(t, err, img.Ref())
		want, err := fixtures.SynthesizeIndex(img, fixtures.WithScale(0.001))
		require.NoError(t, err)
		wantDigest, err := want.Digest()
		require.NoError(t, err)
		assert.Equal(t, wantDigest, desc.Digest, img.Ref())
	}
}
