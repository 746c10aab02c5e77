package provisioners

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/provision"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
	"github.com/pullthrough/pullthrough/internal/slogw"
)

// ErrDockerUnavailable means no Docker daemon answers.
var ErrDockerUnavailable = dockerenv.ErrUnavailable

// Timings are how long each phase took.
type Timings struct {
	Config time.Duration // generating the request and machine configs
	Create time.Duration // the provisioner creating network and nodes
	Ready  time.Duration // Wait, until the readiness check passed
}

func (t Timings) String() string {
	return fmt.Sprintf("config %s, create %s, ready %s", t.Config.Round(time.Millisecond), t.Create.Round(time.Millisecond), t.Ready.Round(time.Millisecond))
}

// Cluster is a created cluster.
type Cluster struct {
	plan       *Plan
	cluster    provision.Cluster
	log        io.Writer
	readiness  Readiness
	caches     *cache.Set
	clientBase map[string]cache.Stats
	box        *CacheBox

	mu        sync.Mutex
	timings   Timings
	destroyed bool
}

// Create makes the cluster a spec describes and returns once the provisioner
// is done; Wait then waits until it is ready. Leftovers of an earlier run
// with the same name are removed first, with a message to the log writer.
func Create(ctx context.Context, spec Spec, opts ...Option) (*Cluster, error) {
	o := &settings{}
	for _, opt := range opts {
		opt(o)
	}
	spec, err := prepare(spec)
	if err != nil {
		return nil, err
	}
	if err := preflight(ctx, spec); err != nil {
		return nil, err
	}
	return create(ctx, spec, o)
}

// create is Create after the spec is prepared and the preflight passed.
func create(ctx context.Context, spec Spec, o *settings) (*Cluster, error) {
	log := slogw.New(o.logger, slog.LevelInfo, slog.String("cluster", spec.Name))
	defer slogw.Flush(log)
	start := time.Now()
	plan, err := configure(ctx, spec, o)
	if err != nil {
		return nil, err
	}
	c := &Cluster{plan: plan, log: log, readiness: o.readiness, caches: o.caches}
	if o.caches != nil {
		c.clientBase = o.caches.Clients()
	}
	c.timings.Config = time.Since(start)
	if c.readiness == nil {
		c.readiness = defaultReadiness(plan.Spec)
	}
	if err := removeLeftovers(ctx, plan, log); err != nil {
		plan.close()
		return nil, err
	}
	if o.inNet != nil {
		if c.box, err = startCacheBox(ctx, plan, o.inNet, log); err != nil {
			_ = removeLeftovers(context.WithoutCancel(ctx), plan, log)
			plan.close()
			return nil, err
		}
	}
	if err := checkReach(ctx, plan, log); err != nil {
		_ = removeLeftovers(context.WithoutCancel(ctx), plan, log)
		plan.close()
		return nil, err
	}

	start = time.Now()
	req := plan.Configs.ClusterRequest
	popts := append(append([]provision.Option{}, plan.Configs.ProvisionOptions...), provision.WithLogWriter(log))
	c.cluster, err = plan.prov.Create(ctx, req, popts...)
	c.timings.Create = time.Since(start)
	if err != nil {
		// Whatever the provisioner made before failing goes too.
		if rerr := removeLeftovers(context.WithoutCancel(ctx), plan, log); rerr != nil {
			err = errors.Join(err, rerr)
		}
		plan.close()
		return nil, fmt.Errorf("cluster %q: creating with the %s provisioner: %w", spec.Name, spec.Provisioner, err)
	}
	return c, nil
}

// New creates a cluster for one test, skipping the test when Docker (or, for
// qemu, KVM and the rest) is missing, failing it instead when CI=true, and
// destroys the cluster when the test ends. StateDir defaults to tb.TempDir().
func New(tb testing.TB, spec Spec, opts ...Option) *Cluster {
	tb.Helper()
	spec = spec.withDefaults()
	if err := spec.validate(); err != nil {
		tb.Fatalf("provisioners.New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := preflight(ctx, spec); err != nil {
		if errors.Is(err, errNotBuilt) {
			tb.Fatalf("provisioners.New: %v", err)
		}
		if os.Getenv("CI") == "true" {
			tb.Fatalf("provisioners.New: %v (CI=true: missing prerequisites fail instead of skipping)", err)
		}
		tb.Skipf("provisioners.New: %v", err)
	}
	if spec.StateDir == "" && spec.Provisioner == Qemu {
		spec.StateDir = shortStateDir(tb)
	}
	if spec.StateDir == "" {
		spec.StateDir = tb.TempDir()
	}
	o := &settings{}
	for _, opt := range opts {
		opt(o)
	}
	c, err := create(ctx, spec, o)
	if err != nil {
		tb.Fatalf("provisioners.New: %v", err)
	}
	tb.Cleanup(func() {
		if c.caches != nil {
			// Which node pulled what, in the test's log (go test -v).
			tb.Logf("cluster %q pulls through the caches:\n%s", spec.Name, c.PullTable())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.Destroy(ctx); err != nil {
			tb.Errorf("provisioners: destroying cluster %q: %v", spec.Name, err)
		}
	})
	return c
}

// Wait blocks until the readiness check passes or ctx ends.
func (c *Cluster) Wait(ctx context.Context) error {
	start := time.Now()
	err := c.readiness.Wait(ctx, c)
	c.mu.Lock()
	c.timings.Ready = time.Since(start)
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("cluster %q: waiting until ready: %w", c.plan.Spec.Name, err)
	}
	return nil
}

// CacheBox is the container of WithInNetworkCaches, or nil.
func (c *Cluster) CacheBox() *CacheBox { return c.box }

// Destroy removes the nodes, the network and the state directory. It is safe
// to call twice.
func (c *Cluster) Destroy(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.destroyed {
		return nil
	}
	defer slogw.Flush(c.log)
	var err error
	if c.plan.Spec.Provisioner == Docker {
		err = destroyDocker(ctx, c.plan)
	} else {
		err = c.plan.prov.Destroy(ctx, c.cluster, provision.WithLogWriter(c.log), provision.WithDeleteOnErr(true))
	}
	if err != nil {
		// What the provisioner could not remove goes by label, as the
		// leftovers of a crashed run do.
		err = fmt.Errorf("cluster %q: destroying: %w", c.plan.Spec.Name, err)
		if rerr := removeLeftovers(ctx, c.plan, c.log); rerr != nil {
			return errors.Join(err, rerr)
		}
		fmt.Fprintf(c.log, "%v; removed what was left by label\n", err)
	}
	if rerr := os.RemoveAll(filepath.Join(c.plan.Spec.StateDir, c.plan.Spec.Name)); rerr != nil {
		return errors.Join(err, rerr)
	}
	c.destroyed = true
	c.plan.close()
	return nil
}

// Timings returns how long each phase took so far.
func (c *Cluster) Timings() Timings {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.timings
}

// Plan returns the request and configs the cluster was made from.
func (c *Cluster) Plan() *Plan { return c.plan }

// Provisioned is Talos's view of the cluster, for access.NewAdapter and the
// like.
func (c *Cluster) Provisioned() provision.Cluster { return c.cluster }

// Nodes lists the nodes as the provisioner made them.
func (c *Cluster) Nodes() []provision.NodeInfo { return c.cluster.Info().Nodes }
