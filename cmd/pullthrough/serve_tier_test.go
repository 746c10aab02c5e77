package main

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"strings"
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
	port := freeBase(t, 1)
	cmd := exec.Command(binary, "serve", "--upstream", "registry.test="+o.URL, "--tier", "registry.test="+tier.URL,
		"--ports-from", fmt.Sprint(port), "--storage", t.TempDir(), "--s3-endpoint", "http://"+s3srv.Addr,
		"--s3-bucket", fleettest.Bucket, "--redis", "redis://"+redis.Addr, "--advertise", "127.0.0.1", "--listen", "127.0.0.1")
	cmd.Env = append(cmd.Environ(), "AWS_ACCESS_KEY_ID="+fleettest.AccessKey, "AWS_SECRET_ACCESS_KEY="+fleettest.SecretKey)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	ready := false
	for sc.Scan() {
		if sc.Text() == "# ready" {
			ready = true
			break
		}
	}
	require.True(t, ready, "serve did not start: %s", stderr.String())
	go func() { _, _ = io.Copy(io.Discard, stdout) }()

	got, err := getDigest(t.Context(), fmt.Sprintf("127.0.0.1:%d", port), "app", d)
	require.NoError(t, err)
	assert.Equal(t, d.String(), got)
	assert.EqualValues(t, 1, tier.blobGETs.Load(), "the tier served the blob")
	assert.Zero(t, o.blobGETs.Load(), "serve went to the origin past its tier")
}
