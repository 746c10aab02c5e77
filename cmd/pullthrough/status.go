package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newStatus() *cobra.Command {
	var f cacheFlags
	var asJSON bool
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
	return cmd
}
