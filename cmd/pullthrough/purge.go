package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pullthrough/pullthrough/cache"
)

func newPurge() *cobra.Command {
	var f cacheFlags
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "purge",
		Short: "Remove everything the caches stored (says what, then removes it)",
		Long: `purge removes what the caches stored under --storage: the content directory of each
cache's storage directory, and nothing else. Files and directories of anyone else under
the storage root are kept and listed. Caches running on the storage are refused (stop them
first); --dry-run only reports.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, err := f.root()
			if err != nil {
				return err
			}
			return purgeRoot(cmd, root, dryRun)
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "say what would be removed, remove nothing")
	return cmd
}

// purgeRoot removes each storage directory's content under root, and says
// what it removed and what it kept.
func purgeRoot(cmd *cobra.Command, root string, dryRun bool) error {
	out := cmd.OutOrStdout()
	dirs, err := storageDirs(cmd, root, dryRun)
	if err != nil {
		return err
	}
	if len(dirs) == 0 {
		fmt.Fprintf(out, "nothing stored by pullthrough in %s\n", root)
		printKept(out, root, nil)
		return nil
	}
	verb := "removed"
	if dryRun {
		verb = "would remove"
	}
	var total int64
	for _, d := range dirs {
		n := du(d.Content)
		total += n
		if !dryRun {
			if err := os.RemoveAll(d.Content); err != nil {
				return fmt.Errorf("removing %s: %w", d.Content, err)
			}
			// The storage directory itself goes too when nothing else is in it.
			_ = os.Remove(d.Path)
		}
		fmt.Fprintf(out, "%s %s  %s\n", verb, mb(n), d.Content)
	}
	fmt.Fprintf(out, "%s %s in all from %s\n", verb, mb(total), root)
	printKept(out, root, dirs)
	return nil
}

// storageDirs lists the caches' storage directories under root and refuses,
// naming the directory and who runs on it, when a running cache serves from
// one (unless only reporting).
func storageDirs(cmd *cobra.Command, root string, dryRun bool) ([]cache.StorageDir, error) {
	dirs, err := cache.StorageDirs(root)
	if err != nil {
		return nil, fmt.Errorf("reading storage %s: %w", root, err)
	}
	if dryRun {
		return dirs, nil
	}
	var busy []string
	for _, d := range dirs {
		if d.InUse {
			busy = append(busy, fmt.Sprintf("%s (served by %s)", d.Path, whoServes(cmd, d.Path)))
		}
	}
	if len(busy) > 0 {
		return nil, fmt.Errorf("caches are running on this storage: %s; stop them first (`pullthrough status` lists them; `pullthrough down` stops a detached one); nothing was removed",
			strings.Join(busy, ", "))
	}
	return dirs, nil
}

// whoServes names the running process or container that serves a storage
// directory.
func whoServes(cmd *cobra.Command, dir string) string {
	recs, _ := cache.ListRunning()
	for _, r := range recs {
		for _, c := range r.Caches {
			if filepath.Clean(c.Storage) == filepath.Clean(dir) {
				return describePID(r.PID)
			}
		}
	}
	for _, d := range detachedCaches(cmd.Context()) {
		if d.storage != "" && filepath.Clean(d.storage) == filepath.Dir(filepath.Clean(dir)) {
			return fmt.Sprintf("the detached container %q", d.name)
		}
	}
	return "a running cache (process not recorded)"
}

// describePID is "process 1234 (pullthrough up --storage …)".
func describePID(pid int) string {
	s := "process " + strconv.Itoa(pid)
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil {
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) > 0 {
			args[0] = filepath.Base(args[0])
			line := strings.Join(args, " ")
			if len(line) > 100 {
				line = line[:100] + "…"
			}
			s += " (" + line + ")"
		}
	}
	return s
}

// printKept lists what is under root besides the content removed: others'
// files and directories, which purge and gc never touch.
func printKept(w io.Writer, root string, dirs []cache.StorageDir) {
	ours := map[string]bool{}
	for _, d := range dirs {
		ours[d.Path] = true
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	var kept []string
	for _, e := range ents {
		p := filepath.Join(root, e.Name())
		if ours[p] {
			// Beside the content, a storage directory holds nothing of the
			// engine's; anything there is someone else's.
			inner, _ := os.ReadDir(p)
			for _, i := range inner {
				if q := filepath.Join(p, i.Name()); q != filepath.Join(p, filepathBase(dirs, p)) {
					kept = append(kept, q)
				}
			}
			continue
		}
		kept = append(kept, p)
	}
	if len(kept) > 0 {
		fmt.Fprintf(w, "kept (not the caches' content): %s\n", strings.Join(kept, ", "))
	}
}

func filepathBase(dirs []cache.StorageDir, path string) string {
	for _, d := range dirs {
		if d.Path == path {
			return filepath.Base(d.Content)
		}
	}
	return ""
}
