package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/internal/fleettest"
)

// serve takes --tier as up does (one wiring path): a fleet instance asks the
// tier before the origin, and the origin sees no blob request.
func TestServeUsesItsTier(t *testing.T) {
	redis, s3srv := fleettest.Redis(t), fleettest.S3(t)
	o, tier := newOrigin(t), newOrigin(t)
	l := o.push(t, "app:v1", 1<<20, 91)
	tier.push(t, "app:v1", 1<<20, 91) // the same content, as a tier in front of the origin holds it
	d, err := l.Digest()
	require.NoError(t, err)
	in := startServe(t, o, redis.Addr, s3srv.Addr, "10s", "--tier", "registry.test="+tier.URL)
	got, err := getDigest(t.Context(), in.addr, "app", d)
	require.NoError(t, err)
	assert.Equal(t, d.String(), got)
	assert.EqualValues(t, 1, tier.blobGETs.Load(), "the tier served the blob")
	assert.Zero(t, o.blobGETs.Load(), "serve went to the origin past its tier")
}
