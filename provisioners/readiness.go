package provisioners

import (
	"context"
	"fmt"
	"io"

	"github.com/siderolabs/talos/pkg/cluster/check"
	"github.com/siderolabs/talos/pkg/conditions"
	"github.com/siderolabs/talos/pkg/provision/access"
)

// Readiness decides when a created cluster is ready.
type Readiness interface {
	Wait(ctx context.Context, c *Cluster) error
}

// ReadinessFunc adapts a function to Readiness.
type ReadinessFunc func(ctx context.Context, c *Cluster) error

// Wait calls f.
func (f ReadinessFunc) Wait(ctx context.Context, c *Cluster) error { return f(ctx, c) }

func defaultReadiness(Spec) Readiness { return TalosReady() }

// AllOf is ready when each check is, in order, as Talos's check.Wait runs
// its conditions; the first failure ends the wait.
func AllOf(checks ...Readiness) Readiness {
	return ReadinessFunc(func(ctx context.Context, c *Cluster) error {
		for _, r := range checks {
			if err := r.Wait(ctx, c); err != nil {
				return err
			}
		}
		return nil
	})
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

// writerReporter prints check.Wait's condition updates to the log writer,
// where talosctl prints them to stderr.
type writerReporter struct{ w io.Writer }

func (r writerReporter) Update(c conditions.Condition) {
	fmt.Fprintln(r.w, c.String())
}
