package provisioners

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/pullthrough/pullthrough/cache"
)

// NodeReport is what a node says it pulled, for readiness checks that can
// tell (fixtures' stand-in nodes report it; a real Talos node does not).
type NodeReport struct {
	Wanted, Images int     // images its config names, and pulled completely
	Bytes          int64   // manifest and blob bytes it received
	Fallbacks      int     // pull steps the registry itself served, around the mirrors
	Seconds        float64 // time its pulls took
}

// NodeReporter is a Readiness that knows what each node pulled.
type NodeReporter interface {
	NodeReport(node string) (NodeReport, bool)
}

// NodePulls is one node's share of the caches' work: what the caches of
// WithCaches served the node's address, and what the node itself reported.
type NodePulls struct {
	Node string
	Addr string
	// Caches are the counters of the requests from the node's address,
	// summed over the set's caches, since the cluster was created.
	Caches cache.Stats
	// Report is the node's own, when the readiness check has one.
	Report *NodeReport
}

// AllNodesNatted is the Node of the one NodePulls that stands for every
// node of a rootless daemon's cluster: their requests reach the caches
// through slirp4netns, from this host's own address, so the caches' counters
// cannot tell the nodes apart (each node's own report still can).
const AllNodesNatted = "(all nodes, through slirp4netns)"

// Pulls says, per node, what the caches served it: which node pulled what,
// where the caches' counters say only which registry. Nil without
// WithCaches.
func (c *Cluster) Pulls() []NodePulls {
	if c.caches == nil || c.cluster == nil {
		return nil
	}
	now := c.caches.Clients()
	rep, _ := c.readiness.(NodeReporter)
	var out []NodePulls
	for _, n := range c.cluster.Info().Nodes {
		np := NodePulls{Node: n.Name}
		for _, ip := range n.IPs {
			a := ip.String()
			if np.Addr == "" {
				np.Addr = a
			}
			np.Caches = np.Caches.Add(now[a].Sub(c.clientBase[a]))
		}
		if rep != nil {
			if r, ok := rep.NodeReport(n.Name); ok {
				np.Report = &r
			}
		}
		out = append(out, np)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	if c.plan.natted {
		// A rootless daemon's nodes all arrive from this host's address:
		// one line for them all, named for what it is, not zeros per node.
		a := c.plan.mirrorAddr
		out = append(out, NodePulls{Node: AllNodesNatted, Addr: a, Caches: now[a].Sub(c.clientBase[a])})
	}
	return out
}

// PullTable is Pulls as a short table, one line per node.
func (c *Cluster) PullTable() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "node\taddress\trequests\thits\tmisses\tserved MB\timages\tfallbacks\tpull s")
	for _, p := range c.Pulls() {
		images, fallbacks, secs := "-", "-", "-"
		if r := p.Report; r != nil {
			images = fmt.Sprintf("%d/%d", r.Images, r.Wanted)
			fallbacks = fmt.Sprint(r.Fallbacks)
			secs = fmt.Sprintf("%.2f", r.Seconds)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%.1f\t%s\t%s\t%s\n", strings.TrimPrefix(p.Node, "/"), p.Addr, p.Caches.Requests, p.Caches.Hits, p.Caches.Misses,
			float64(p.Caches.ServedBytes)/1e6, images, fallbacks, secs)
	}
	_ = tw.Flush()
	return b.String()
}
