package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pullthrough/pullthrough/cache"
)

// blobFile is one stored blob or manifest of one upstream's storage.
type blobFile struct {
	path string
	size int64
	used time.Time // last served, to the hour
}

// storedBlobs lists the content files of the caches' storage directories
// (each StorageDir's Blobs). Fills in progress live beside them and are
// never listed.
func storedBlobs(dirs []cache.StorageDir) ([]blobFile, error) {
	var out []blobFile
	for _, sd := range dirs {
		dir := sd.Blobs
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			info, err := e.Info()
			if err != nil || !info.Mode().IsRegular() {
				continue
			}
			out = append(out, blobFile{filepath.Join(dir, e.Name()), info.Size(), info.ModTime()})
		}
	}
	return out, nil
}

// parseSize reads "20GB", "500MB", "1.5GiB" or a number of bytes.
func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := float64(1)
	for _, u := range []struct {
		suffix string
		m      float64
	}{{"TIB", 1 << 40}, {"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.m
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 {
		return 0, usagef("size %q: want a size such as 20GB, 500MB or 1.5GiB", s)
	}
	return int64(v * mult), nil
}

func newGC() *cobra.Command {
	var f cacheFlags
	var maxSize string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "gc --max-size SIZE",
		Short: "Remove the least recently served content until the caches fit in SIZE",
		Long: `gc removes stored blobs and manifests, least recently served first, until what is left fits
in --max-size. Downloads in progress are never touched; content removed is fetched again
from upstream when next asked for. Only the caches' own storage directories are touched:
anything else under --storage is kept. Caches running on the storage are refused (stop them
first); --dry-run only reports.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if maxSize == "" {
				return usagef("--max-size is required: want the size to keep, such as --max-size 20GB (0 removes every stored blob)")
			}
			limit, err := parseSize(maxSize)
			if err != nil {
				return err
			}
			root, err := f.root()
			if err != nil {
				return err
			}
			dirs, err := storageDirs(cmd, root, dryRun)
			if err != nil {
				return err
			}
			files, err := storedBlobs(dirs)
			if err != nil {
				return err
			}
			var total int64
			for _, b := range files {
				total += b.size
			}
			sort.Slice(files, func(i, j int) bool { return files[i].used.Before(files[j].used) })
			var removed, freed int64
			for _, b := range files {
				if total <= limit {
					break
				}
				if !dryRun {
					if err := os.Remove(b.path); err != nil {
						continue
					}
				}
				total -= b.size
				removed++
				freed += b.size
			}
			verb := "removed"
			if dryRun {
				verb = "would remove"
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s %d files, %s; %s left in %s\n", verb, removed, mb(freed), mb(total), root)
			printKept(out, root, dirs)
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&maxSize, "max-size", "", "size to keep, e.g. 20GB")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "say what would be removed, remove nothing")
	return cmd
}
