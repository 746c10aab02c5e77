package benchmarks

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/fixtures"
)

// BenchmarkColdFirstByte is the wait for the first byte of a 64 MiB layer
// that no cache holds, over a 20 MiB/s, 20 ms link: straight from the
// upstream (direct) and through an empty cache (cache). of-direct is cache
// over direct, in one run: near 1 when the cache streams what it fetches.
func BenchmarkColdFirstByte(b *testing.B) {
	img := fixtures.Image{Registry: "bench.test", Repository: "big/layer", Tag: "v1", Size: 64 << 20, Layers: 1}
	up := fixtures.NewUpstream(b, "bench.test", []fixtures.Image{img}, fixtures.WithWAN(20*8<<20, 20*time.Millisecond))
	ref, err := name.ParseReference(strings.TrimPrefix(up.URL(), "http://")+"/big/layer:v1", name.Insecure)
	if err != nil {
		b.Fatal(err)
	}
	im, err := remote.Image(ref)
	if err != nil {
		b.Fatal(err)
	}
	layers, err := im.Layers()
	if err != nil {
		b.Fatal(err)
	}
	d, err := layers[0].Digest()
	if err != nil {
		b.Fatal(err)
	}
	firstByte := func(base string) (float64, error) {
		start := time.Now()
		resp, err := http.Get(base + "/v2/big/layer/blobs/" + d.String())
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if _, err := resp.Body.Read(make([]byte, 1)); err != nil {
			return 0, err
		}
		took := time.Since(start).Seconds()
		_, err = io.Copy(io.Discard, resp.Body) // let the fill finish before the next
		return took, err
	}
	var direct float64
	b.Run("direct", func(b *testing.B) {
		var total float64
		for range b.N {
			s, err := firstByte(up.URL())
			if err != nil {
				b.Fatal(err)
			}
			total += s
		}
		direct = total / float64(b.N)
		b.ReportMetric(direct, "first-byte-s/op")
	})
	b.Run("cache", func(b *testing.B) {
		var total float64
		for range b.N {
			b.StopTimer()
			set := cachetest.New(b, cache.WithUpstreams(cache.Upstream{Host: "bench.test", URL: up.URL()}))
			b.StartTimer()
			s, err := firstByte(set.Cache("bench.test").Endpoint())
			if err != nil {
				b.Fatal(err)
			}
			total += s
			b.StopTimer()
			set.Close()
			b.StartTimer()
		}
		b.ReportMetric(total/float64(b.N), "first-byte-s/op")
		if direct > 0 {
			b.ReportMetric(total/float64(b.N)/direct, "of-direct")
		}
	})
}

// BenchmarkConcurrentColdPullProcesses is what `go test ./...` does when
// three packages call cachetest.Main at once: three processes, each with its
// own caches, on one storage directory, each pulling the node image set
// cold. upstream-x is upstream bytes over one set's bytes (1.00: each blob
// fetched once across the processes).
func BenchmarkConcurrentColdPullProcesses(b *testing.B) {
	env := newBenchEnv(b, knobs)
	ctx := context.Background()
	const processes = 3
	var cold coldPulls
	for range b.N {
		b.StopTimer()
		dir := b.TempDir()
		var mirrors []map[string]string
		for range processes {
			mirrors = append(mirrors, startCacheProcess(b, env, dir))
		}
		for _, m := range mirrors { // configs made outside the timing
			if _, err := nodeFor(env.benchKnobs.TalosVersion, m); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		cold.pull(ctx, b, env, mirrors)
	}
	cold.report(b, env)
}

// coldPulls adds up cold pulls made at once through several sets of
// mirrors: time, and what reached the upstreams.
type coldPulls struct {
	elapsed  time.Duration
	upstream fixtures.Stats
}

// pull pulls the image set through every mirror set at once; the timer
// runs for the pulls only.
func (p *coldPulls) pull(ctx context.Context, b *testing.B, env *benchEnv, mirrors []map[string]string) {
	b.StopTimer()
	before := env.Upstreams.Total()
	b.StartTimer()
	start := time.Now()
	var g errgroup.Group
	for _, m := range mirrors {
		g.Go(func() error { _, err := env.PullMirrors(ctx, m); return err })
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	p.elapsed += time.Since(start)
	b.StopTimer()
	p.upstream = p.upstream.Add(env.Upstreams.Total().Sub(before))
	b.StartTimer()
}

// report gives pull-s/op, upstream-MB/op, upstream-manifest-GETs/op and
// upstream-x (content fetched over the set's unique content).
func (p *coldPulls) report(b *testing.B, env *benchEnv) {
	n := float64(b.N)
	b.ReportMetric(p.elapsed.Seconds()/n, "pull-s/op")
	b.ReportMetric(float64(p.upstream.BytesSent)/1e6/n, "upstream-MB/op")
	b.ReportMetric(float64(p.upstream.ManifestGET)/n, "upstream-manifest-GETs/op")
	b.ReportMetric(float64(p.upstream.ContentBytes)/n/float64(env.Upstreams.UniquePullSize()), "upstream-x")
}

const helperEnv = "PULLTHROUGH_BENCH_CACHE_PROCESS"

// runCacheProcess is one of BenchmarkConcurrentColdPullProcesses's
// processes: caches for the upstreams it is given, its mirrors on stdout as
// JSON, until stdin closes.
func runCacheProcess() {
	var ups []cache.Upstream
	if err := json.Unmarshal([]byte(os.Getenv("UPSTREAMS")), &ups); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	set, err := cache.Start(context.Background(), cache.WithUpstreams(ups...),
		cache.WithStorageDir(os.Getenv("STORAGE")), cache.WithListenAddrs("127.0.0.1"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	m, err := set.Mirrors("127.0.0.1")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	out, _ := json.Marshal(m)
	fmt.Printf("%s\n", out)
	_, _ = io.Copy(io.Discard, os.Stdin)
	set.Close()
	os.Exit(0)
}

func startCacheProcess(b *testing.B, env *benchEnv, dir string) map[string]string {
	b.Helper()
	type up struct{ Host, URL string }
	var ups []up
	for _, u := range env.CacheUpstreams() {
		ups = append(ups, up{u.Host, u.URL})
	}
	spec, _ := json.Marshal(ups)
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "UPSTREAMS="+string(spec), "STORAGE="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("cache process did not start: %v", err)
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		b.Fatalf("cache process said %q", line)
	}
	return m
}

// BenchmarkSharedLayerPull pulls two images of one upstream that share a
// 32 MiB base layer, one after the other, through one cold cache.
// upstream-MB/op against unique-MB: equal when a layer is fetched once per
// upstream whatever the repository.
func BenchmarkSharedLayerPull(b *testing.B) {
	var sent atomic.Int64
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reg.ServeHTTP(&countWriter{w, &sent}, r)
	}))
	b.Cleanup(srv.Close)
	src := rand.New(rand.NewSource(7))
	base, err := random.Layer(32<<20, "application/vnd.oci.image.layer.v1.tar", random.WithSource(src))
	if err != nil {
		b.Fatal(err)
	}
	unique := int64(0)
	bs, _ := base.Size()
	unique += bs
	var refs []string
	for i, repo := range []string{"team/one", "other/two"} {
		own, err := random.Layer(1<<20, "application/vnd.oci.image.layer.v1.tar", random.WithSource(rand.New(rand.NewSource(int64(10+i)))))
		if err != nil {
			b.Fatal(err)
		}
		img, err := mutate.AppendLayers(empty.Image, base, own)
		if err != nil {
			b.Fatal(err)
		}
		ref := strings.TrimPrefix(srv.URL, "http://") + "/" + repo + ":v1"
		if err := writeImage(ref, img); err != nil {
			b.Fatal(err)
		}
		os, _ := own.Size()
		m, _ := img.RawManifest()
		c, _ := img.RawConfigFile()
		unique += os + int64(len(m)) + int64(len(c))
		refs = append(refs, repo+":v1")
	}
	var total int64
	for range b.N {
		b.StopTimer()
		set := cachetest.New(b, cache.WithUpstreams(cache.Upstream{Host: "shared.test", URL: srv.URL}))
		before := sent.Load()
		b.StartTimer()
		for _, r := range refs {
			if err := pullImage(set.Cache("shared.test").Addr() + "/" + r); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		total += sent.Load() - before
		set.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(total)/1e6/float64(b.N), "upstream-MB/op")
	b.ReportMetric(float64(unique)/1e6, "unique-MB")
	b.ReportMetric(float64(total)/float64(b.N)/float64(unique), "upstream-x")
}

type countWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func writeImage(ref string, img v1.Image) error {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	return remote.Write(r, img)
}

func pullImage(ref string) error {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	img, err := remote.Image(r)
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	_, err = img.RawConfigFile()
	return err
}
