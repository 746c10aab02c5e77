package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/spf13/cobra"
)

func newStatus() *cobra.Command {
	var f cacheFlags
	var asJSON, clients bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every running cache: address, upstream, mode, hits, misses, bytes, disk used",
		Long: `status lists the caches running on this host, wherever they were started and on whatever
ports: pullthrough up (with any --ports-from, --os-ports or --storage), up --detach under any
--name, and tests' cachetest caches. --storage, --upstream and --ports-from narrow the list.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			found, err := findRunning(cmd, &f)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if found == nil {
					found = []running{}
				}
				b, _ := json.MarshalIndent(found, "", "  ")
				fmt.Fprintln(out, string(b))
				return nil
			}
			if len(found) == 0 {
				fmt.Fprintln(out, notRunning(cmd, &f))
				return nil
			}
			if clients {
				return printClients(cmd, out, found)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "UPSTREAM\tADDRESS\tMODE\tREQUESTS\tHITS\tMISSES\tFROM UPSTREAM\tSERVED\tDISK\tSTORAGE")
			for _, r := range found {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", r.Host, r.Addr, r.Mode, r.Stats.Requests, r.Stats.Hits,
					r.Stats.Misses, mb(r.Stats.UpstreamBytes), mb(r.Stats.ServedBytes), mb(r.DiskUsed), r.Storage)
			}
			return tw.Flush()
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&clients, "clients", false, "per client address (a node, this host): what each cache served it")
	return cmd
}

// printClients is status --clients: one line per cache and client address.
func printClients(cmd *cobra.Command, out io.Writer, found []running) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UPSTREAM\tADDRESS\tCLIENT\tREQUESTS\tHITS\tMISSES\tNOT CACHED\tOTHER REGISTRY\tSERVED")
	for _, r := range found {
		per, err := clientStats(cmd.Context(), r.Addr)
		if err != nil {
			fmt.Fprintf(tw, "%s\t%s\t(%v)\t\t\t\t\t\t\n", r.Host, r.Addr, err)
			continue
		}
		ips := make([]string, 0, len(per))
		for ip := range per {
			ips = append(ips, ip)
		}
		sort.Strings(ips)
		for _, ip := range ips {
			s := per[ip]
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", r.Host, r.Addr, ip, s.Requests, s.Hits, s.Misses, s.NotCached, s.Unrouted, mb(s.ServedBytes))
		}
	}
	return tw.Flush()
}

func clientStats(ctx context.Context, addr string) (map[string]cache.Stats, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+cache.ClientsPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s (a pullthrough from before per-client counters?)", cache.ClientsPath, resp.Status)
	}
	var per map[string]cache.Stats
	return per, json.NewDecoder(resp.Body).Decode(&per)
}
