package cachetest_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullthrough/pullthrough/cache"
)

// A cache in front of a local registry standing in for ghcr.io: the first
// pull fetches from upstream, the second is served from the cache alone.
func Example() {
	upstream := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer upstream.Close()
	img, _ := random.Image(1024, 2, random.WithSource(rand.NewSource(42)))
	src, _ := name.ParseReference(strings.TrimPrefix(upstream.URL, "http://")+"/siderolabs/kubelet:v1.36.0", name.Insecure)
	if err := remote.Write(src, img); err != nil {
		log.Fatal(err)
	}

	dir, _ := os.MkdirTemp("", "pullthrough-example-")
	defer os.RemoveAll(dir)
	set, err := cache.Start(context.Background(),
		cache.WithUpstreams(cache.Upstream{Host: "ghcr.io", URL: upstream.URL}),
		cache.WithStorageDir(dir))
	if err != nil {
		log.Fatal(err)
	}
	defer set.Close()
	ghcr := set.Cache("ghcr.io")

	ref, _ := name.ParseReference(ghcr.Addr()+"/siderolabs/kubelet:v1.36.0", name.Insecure)
	for _, pass := range []string{"cold", "warm"} {
		ghcr.ResetStats()
		pulled, err := remote.Image(ref)
		if err != nil {
			log.Fatal(err)
		}
		layers, _ := pulled.Layers()
		for _, l := range layers {
			rc, _ := l.Compressed()
			io.Copy(io.Discard, rc)
			rc.Close()
		}
		want, _ := img.Digest()
		got, _ := pulled.Digest()
		st := ghcr.Stats()
		fmt.Printf("%s: same digest %t, hits %d, misses %d, upstream requests %d\n",
			pass, got == want, st.Hits, st.Misses, st.UpstreamRequests)
	}
	flags, _ := set.MirrorFlags("127.0.0.1")
	fmt.Println(strings.Replace(flags[0], ghcr.Addr(), "127.0.0.1:PORT", 1))
	// Output:
	// cold: same digest true, hits 0, misses 3, upstream requests 4
	// warm: same digest true, hits 3, misses 0, upstream requests 0
	// ghcr.io=http://127.0.0.1:PORT
}
