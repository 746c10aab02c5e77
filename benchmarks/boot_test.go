package benchmarks

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/pullthrough/pullthrough/internal/testnet"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/provisioners"
)

// BenchmarkBoot compares cluster boots with a cold and a warm cache.
func BenchmarkBoot(b *testing.B) {
	env := newBenchEnv(b, knobs)
	b.Run("docker", func(b *testing.B) { benchBootDocker(b, env) })
	b.Run("qemu", func(b *testing.B) { benchBootQemu(b, env) })
}

func benchLog(b *testing.B) *slog.Logger {
	if testing.Verbose() {
		return tbLogger(b)
	}
	return nil
}

// tbLogger logs to tb.Log, a record a call.
func tbLogger(tb testing.TB) *slog.Logger { return slog.New(slog.NewTextHandler(tbWriter{tb}, nil)) }

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func bootSpec(b *testing.B, image string, i int) provisioners.Spec {
	return provisioners.Spec{
		Name:          fmt.Sprintf("pt-bench-%d-%d", os.Getpid(), i),
		ControlPlanes: knobs.ControlPlanes, Workers: knobs.Workers,
		Image: image,
		// A network of this package's own, held apart from other test
		// processes' (testnet.Subnet).
		CIDR:     testnet.Subnet(b, "10.90").String(),
		StateDir: b.TempDir(),
	}
}

func benchBootDocker(b *testing.B, env *benchEnv) {
	image := env.NodeImage(b, benchLog(b))
	var preloaded func(i int) provisioners.Spec
	if img := env.PreloadedImage(b, benchLog(b)); img != "" {
		preloaded = func(i int) provisioners.Spec { return bootSpec(b, img, i) }
	}
	benchBoot(b, env, func(i int) provisioners.Spec { return bootSpec(b, image, i) }, preloaded)
}

// benchBootQemu boots qemu clusters: stand-in Talos VMs (scripts/qemu-up)
// by default, a real Talos where PULLTHROUGH_TALOS_KERNEL and
// PULLTHROUGH_TALOS_INITRAMFS name its vmlinuz and initramfs.xz (that needs
// KVM). The bridge appears only with each cluster, so the caches listen on
// all addresses, and nodes reach them at the CIDR's gateway.
func benchBootQemu(b *testing.B, env *benchEnv) {
	q, err := provisioners.StandinQemu()
	if k, i := os.Getenv("PULLTHROUGH_TALOS_KERNEL"), os.Getenv("PULLTHROUGH_TALOS_INITRAMFS"); k != "" || i != "" {
		q, err = provisioners.QemuSpec{KernelPath: k, InitramfsPath: i}, nil
	}
	spec := func(i int) provisioners.Spec {
		// QEMU's unix sockets live in the state directory: keep it short.
		dir, derr := os.MkdirTemp("", "ptb-")
		if derr != nil {
			b.Fatal(derr)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		return provisioners.Spec{
			Name:        fmt.Sprintf("pt-bq-%d-%d", os.Getpid()%100000, i),
			Provisioner: provisioners.Qemu, ControlPlanes: knobs.ControlPlanes, Workers: knobs.Workers,
			CIDR:     testnet.Subnet(b, "10.91").String(),
			StateDir: dir,
			Qemu:     q,
		}
	}
	if err == nil {
		err = provisioners.QemuPreflight(spec(0))
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			b.Fatalf("qemu boot: %v", err)
		}
		b.Skipf("qemu boot: %v", err)
	}
	benchBoot(b, env, spec, nil, cache.WithListenAll())
}

// benchBoot measures boots whose nodes already hold every image (the floor
// no cache can beat, where preloadedSpec is given), cold boots (fresh caches
// each time) and warm ones (one set of caches, filled by a first boot outside
// the timing). warm reports speedup-x (cold over warm) and of-preloaded
// (warm over the floor, in the same run).
func benchBoot(b *testing.B, env *benchEnv, bootSpec, preloadedSpec func(i int) provisioners.Spec, cacheOpts ...cache.Option) {
	log := benchLog(b)
	ctx := context.Background()
	var coldSeconds, floorSeconds float64
	iter := 0
	if preloadedSpec != nil {
		b.Run("preloaded", func(b *testing.B) {
			b.StopTimer()
			set := env.NewCaches(b, cacheOpts...)
			var total result
			for range b.N {
				iter++
				spec := preloadedSpec(iter)
				b.StartTimer()
				r, err := env.BootFor(ctx, b.Name(), set, spec, log)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if r.UpstreamRequests != 0 || set.Total().Requests != 0 {
					b.Fatalf("a preloaded boot pulled: %d upstream requests, %d cache requests", r.UpstreamRequests, set.Total().Requests)
				}
				total = add(total, r)
			}
			report(b, total, "boot-s/op")
			floorSeconds = total.Seconds / float64(b.N)
		})
	}
	b.Run("cold", func(b *testing.B) {
		var total result
		for range b.N {
			b.StopTimer()
			set, stop, err := env.StartCaches(ctx, cacheOpts...)
			if err != nil {
				b.Fatal(err)
			}
			iter++
			spec := bootSpec(iter)
			b.StartTimer()
			r, err := env.BootFor(ctx, b.Name(), set, spec, log)
			b.StopTimer()
			stop()
			if err != nil {
				b.Fatal(err)
			}
			total = add(total, r)
			b.StartTimer()
		}
		report(b, total, "boot-s/op")
		coldSeconds = total.Seconds / float64(b.N)
	})
	b.Run("warm", func(b *testing.B) {
		b.StopTimer()
		set := env.NewCaches(b, cacheOpts...)
		iter++
		fill, err := env.Boot(ctx, set, bootSpec(iter), log)
		if err != nil {
			b.Fatal(err)
		}
		if coldSeconds == 0 {
			coldSeconds = fill.Seconds
		}
		b.StartTimer()
		var total result
		for range b.N {
			b.StopTimer()
			iter++
			spec := bootSpec(iter)
			b.StartTimer()
			r, err := env.BootFor(ctx, b.Name(), set, spec, log)
			if err != nil {
				b.Fatal(err)
			}
			total = add(total, r)
		}
		report(b, total, "boot-s/op")
		warm := total.Seconds / float64(b.N)
		b.ReportMetric(coldSeconds/warm, "speedup-x")
		if floorSeconds > 0 {
			b.ReportMetric(warm/floorSeconds, "of-preloaded")
		}
	})
}

// BenchmarkBootNodes is how a warm boot grows with the number of nodes
// booting at once through one set of caches (1, 3 and 5: one control plane
// and the rest workers): per-node pull time as the nodes report it, and the
// CPU this process (the caches, and the provisioner's own small part) spent
// per boot, which says what one cache machine serves.
func BenchmarkBootNodes(b *testing.B) {
	env := newBenchEnv(b, knobs)
	image := env.NodeImage(b, benchLog(b))
	log := benchLog(b)
	ctx := context.Background()
	set := env.NewCaches(b)
	// Filled once, outside every timing.
	if _, err := env.Boot(ctx, set, bootSpec(b, image, 200), log); err != nil {
		b.Fatal(err)
	}
	for i, nodes := range []int{1, 3, 5} {
		b.Run(fmt.Sprintf("nodes-%d", nodes), func(b *testing.B) {
			var total result
			var pullS float64
			for n := range b.N {
				spec := bootSpec(b, image, 201+10*i+n)
				spec.ControlPlanes, spec.Workers = 1, nodes-1
				r, pulls, err := env.BootNodes(ctx, set, spec, log)
				if err != nil {
					b.Fatal(err)
				}
				for _, p := range pulls {
					pullS += p / float64(len(pulls))
				}
				total = add(total, r)
			}
			report(b, total, "boot-s/op")
			b.ReportMetric(pullS/float64(b.N), "node-pull-s/op")
			b.ReportMetric(total.ReadyCPUS/float64(b.N), "cache-cpu-s/op")
		})
	}
}
