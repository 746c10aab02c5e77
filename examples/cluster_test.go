// Package examples runs the README's "In a test suite" snippet from a module
// of its own, with nothing but the exported API, offline: fixtures'
// registries stand in for the real ones and the stand-in node for Talos.
package examples

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/provisioners"
)

func TestMain(m *testing.M) {
	provisioners.LaunchQemuIfAsked()
	// Offline, fixtures' registries stand in for registry.k8s.io and ghcr.io;
	// with internet, leave WithUpstreams out and the caches front the real ones.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	ups, err := fixtures.StartTalosUpstreams(ctx, provisioners.DefaultTalosVersion, fixtures.WithScale(0.01), fixtures.Unthrottled())
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "pullthrough-example-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := cachetest.Run(m, cache.WithUpstreams(cache.UpstreamsFrom(ups.Origins())...), cache.WithStorageDir(dir))
	ups.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestUpgrade(t *testing.T) {
	// With a real Talos: Image "ghcr.io/siderolabs/talos:v1.13.0" and no
	// WithReadiness (talosctl's own post-create checks are the default).
	image := fixtures.NewStandinImage(t)
	ready := fixtures.StandinReady()
	c := provisioners.New(t, provisioners.Spec{
		Name: fmt.Sprintf("example-%d", os.Getpid()), ControlPlanes: 1, Workers: 1, CIDR: fmt.Sprintf("10.77.%d.0/24", os.Getpid()%250), // any /24 free on the machine
		Image: image,
	}, provisioners.WithCaches(cachetest.Get(t)), provisioners.WithReadiness(ready))
	if err := c.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Log(c.Timings())
	for node, s := range ready.Summaries() {
		t.Logf("%s pulled %d images, %d bytes", node, s.Images, s.Bytes)
	}
	total := cachetest.Get(t).Total()
	t.Log(total)
	if total.Misses == 0 || total.ServedBytes == 0 {
		t.Fatalf("the nodes pulled nothing through the caches: %v", total)
	}
}
