package provisioners

import (
	"context"
	"fmt"
	"io"

	"github.com/siderolabs/talos/pkg/cluster/check"
	"github.com/siderolabs/talos/pkg/conditions"
	"github.com/siderolabs/talos/pkg/provision/access"
	"golang.org/x/sync/errgroup"

	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
)

// Readiness decides when a created cluster is ready.
type Readiness interface {
	Wait(ctx context.Context, c *Cluster) error
}

// ReadinessFunc adapts a function to Readiness.
type ReadinessFunc func(ctx context.Context, c *Cluster) error

// Wait calls f.
func (f ReadinessFunc) Wait(ctx context.Context, c *Cluster) error { return f(ctx, c) }

func defaultReadiness(spec Spec) Readiness {
	if spec.Provisioner == Docker && isStandin(spec.Image) {
		return StandinReady()
	}
	if spec.Provisioner == Qemu && isStandinInitramfs(spec.Qemu.InitramfsPath) {
		return QemuStandinReady()
	}
	return TalosReady()
}

// TalosReady is talosctl cluster create's own post-create: bootstrap etcd on
// the first control plane, then check.Wait with check.DefaultClusterChecks.
// It needs a real Talos image.
func TalosReady() Readiness {
	return ReadinessFunc(func(ctx context.Context, c *Cluster) error {
		a := access.NewAdapter(c.cluster, c.plan.Configs.ProvisionOptions...)
		defer a.Close() //nolint:errcheck
		// Bootstrap waits for the node's API itself, as in talosctl.
		if err := a.Bootstrap(ctx, c.log); err != nil {
			return fmt.Errorf("bootstrapping etcd: %w", err)
		}
		return check.Wait(ctx, a, check.DefaultClusterChecks(), writerReporter{c.log})
	})
}

// StandinReady waits for every stand-in node (package fixtures) to report
// that it pulled its images, and fails if a node reports failures.
func StandinReady() Readiness {
	return ReadinessFunc(func(ctx context.Context, c *Cluster) error {
		cli, err := dockerenv.Client(ctx)
		if err != nil {
			return err
		}
		defer cli.Close()
		g, gctx := errgroup.WithContext(ctx)
		for _, n := range c.Nodes() {
			g.Go(func() error {
				s, err := fixtures.WaitStandin(gctx, cli, n.ID)
				if s.Wanted > 0 {
					c.setSummary(n.Name, s)
				}
				if err != nil {
					return fmt.Errorf("node %q: %w", n.Name, err)
				}
				return nil
			})
		}
		return g.Wait()
	})
}

// writerReporter prints check.Wait's condition updates to the log writer,
// where talosctl prints them to stderr.
type writerReporter struct{ w io.Writer }

func (r writerReporter) Update(c conditions.Condition) {
	fmt.Fprintln(r.w, c.String())
}
