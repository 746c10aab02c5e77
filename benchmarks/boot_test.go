package benchmarks_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"

	"github.com/pullthrough/pullthrough/benchmarks"
	"github.com/pullthrough/pullthrough/provisioners"
)

// BenchmarkBoot compares cluster boots with a cold and a warm cache.
func BenchmarkBoot(b *testing.B) {
	env := benchmarks.NewEnv(b, knobs)
	b.Run("docker", func(b *testing.B) { benchBootDocker(b, env) })
	b.Run("qemu", func(b *testing.B) {
		spec := provisioners.Spec{Name: "pt-bench-qemu", Provisioner: provisioners.Qemu, ControlPlanes: knobs.ControlPlanes, Workers: knobs.Workers,
			Qemu: provisioners.QemuSpec{KernelPath: os.Getenv("PULLTHROUGH_TALOS_KERNEL"), InitramfsPath: os.Getenv("PULLTHROUGH_TALOS_INITRAMFS")}}
		if err := provisioners.QemuPreflight(spec); err != nil {
			b.Skipf("qemu boot: %v", err)
		}
		b.Skip("qemu boot benchmark: the qemu nodes pull through caches listening on all addresses; run with a real Talos kernel and initramfs (PULLTHROUGH_TALOS_KERNEL, PULLTHROUGH_TALOS_INITRAMFS)")
	})
}

func benchLog(b *testing.B) io.Writer {
	if testing.Verbose() {
		return tbWriter{b}
	}
	return io.Discard
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) { w.tb.Log(string(p)); return len(p), nil }

func bootSpec(b *testing.B, image string, i int) provisioners.Spec {
	return provisioners.Spec{
		Name:          fmt.Sprintf("pt-bench-%d-%d", os.Getpid(), i),
		ControlPlanes: knobs.ControlPlanes, Workers: knobs.Workers,
		Image: image,
		// A network of this package's own; the PID keeps two runs apart.
		CIDR:     fmt.Sprintf("10.%d.%d.0/24", 90+os.Getpid()%10, i%250),
		StateDir: b.TempDir(),
	}
}

func benchBootDocker(b *testing.B, env *benchmarks.Env) {
	log := benchLog(b)
	image := env.NodeImage(b, log)
	ctx := context.Background()
	var coldSeconds float64
	iter := 0
	b.Run("cold", func(b *testing.B) {
		var total benchmarks.Result
		for range b.N {
			b.StopTimer()
			set, stop, err := env.StartCaches(ctx)
			if err != nil {
				b.Fatal(err)
			}
			iter++
			spec := bootSpec(b, image, iter)
			b.StartTimer()
			r, err := env.Boot(ctx, set, spec, log)
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
		set := env.NewCaches(b)
		iter++
		fill, err := env.Boot(ctx, set, bootSpec(b, image, iter), log)
		if err != nil {
			b.Fatal(err)
		}
		if coldSeconds == 0 {
			coldSeconds = fill.Seconds
		}
		b.StartTimer()
		var total benchmarks.Result
		for range b.N {
			b.StopTimer()
			iter++
			spec := bootSpec(b, image, iter)
			b.StartTimer()
			r, err := env.Boot(ctx, set, spec, log)
			if err != nil {
				b.Fatal(err)
			}
			total = add(total, r)
		}
		report(b, total, "boot-s/op")
		b.ReportMetric(coldSeconds/(total.Seconds/float64(b.N)), "speedup-x")
	})
}
