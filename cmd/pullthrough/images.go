package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/talosimages"
)

// listFlags say which images a command works on.
type listFlags struct {
	from     string
	talos    string
	platform string
}

func (l *listFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&l.from, "from", "f", "", "file of image references, one a line as talosctl images default prints them ('-': stdin)")
	cmd.Flags().StringVar(&l.talos, "talos", "", "Talos version whose boot images to use (images.List), e.g. v1.13.0")
	cmd.Flags().StringVar(&l.platform, "platform", "linux/amd64", "platform of multi-platform images ('all': every one)")
}

// image is one reference of a list, and where its registry's cache is.
type image struct {
	ref  string // as the list gives it
	host string // registry host as caches name it: docker.io, not index.docker.io
	repo string
	tag  string // tag or digest
}

func (i image) through(addr string) string {
	sep := ":"
	if strings.Contains(i.tag, ":") {
		sep = "@"
	}
	return addr + "/" + i.repo + sep + i.tag
}

// refs reads the list: arguments, --from, --talos.
func (l *listFlags) refs(cmd *cobra.Command, args []string) ([]image, error) {
	type line struct {
		text, where string
	}
	var lines []line
	for i, a := range args {
		lines = append(lines, line{a, fmt.Sprintf("argument %d", i+1)})
	}
	if l.from != "" {
		var r io.Reader
		src := l.from
		if l.from == "-" {
			r, src = cmd.InOrStdin(), "stdin"
		} else {
			f, err := os.Open(l.from)
			if err != nil {
				return nil, fmt.Errorf("reading the image list: %w", err)
			}
			defer f.Close()
			r = f
		}
		sc := bufio.NewScanner(r)
		for n := 1; sc.Scan(); n++ {
			t := strings.TrimSpace(sc.Text())
			if t == "" || strings.HasPrefix(t, "#") {
				continue
			}
			lines = append(lines, line{t, fmt.Sprintf("%s line %d", src, n)})
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("reading the image list %s: %w", src, err)
		}
	}
	if l.talos != "" {
		refs, err := talosimages.List(l.talos)
		if err != nil {
			return nil, usageError{err}
		}
		for _, ref := range refs {
			lines = append(lines, line{ref, "Talos " + l.talos + " boot images"})
		}
	}
	if len(lines) == 0 {
		return nil, usagef("no images: give references as arguments, --from FILE or --talos VERSION")
	}
	var out []image
	for _, ln := range lines {
		ref, err := name.ParseReference(ln.text)
		if err != nil {
			return nil, usagef("%s: %q is not an image reference: %v", ln.where, ln.text, err)
		}
		host := ref.Context().RegistryStr()
		if host == name.DefaultRegistry {
			host = "docker.io"
		}
		out = append(out, image{ref: ln.text, host: host, repo: ref.Context().RepositoryStr(), tag: ref.Identifier()})
	}
	return out, nil
}

// pulled is one image read whole through a cache: every manifest, the
// config and every layer, digests checked by go-containerregistry.
type pulled struct {
	img image
	// raw and digest are the manifest the reference names, as served: an
	// index for a multi-platform image.
	raw    []byte
	digest v1.Hash
	index  v1.ImageIndex // nil for a single-platform image
	imgs   []v1.Image
	bytes  int64
	err    error
}

// pullAll reads every image through the set, a few at a time; progress gets
// each image's bytes as they arrive.
func pullAll(ctx context.Context, src *sources, imgs []image, platform string, p *progress) []pulled {
	out := make([]pulled, len(imgs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 3)
	for i, img := range imgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			out[i] = pullOne(ctx, src, img, platform, p)
			out[i].err = src.clean(out[i].err, img)
			p.done(img.ref, out[i].err)
		}()
	}
	wg.Wait()
	p.wait()
	return out
}

func pullOne(ctx context.Context, src *sources, img image, platform string, p *progress) pulled {
	r := pulled{img: img}
	ref, err := name.ParseReference(img.through(src.addr[img.host]), name.Insecure)
	if err != nil {
		r.err = err
		return r
	}
	desc, err := remote.Get(ref, remote.WithContext(ctx))
	if err != nil {
		r.err = err
		return r
	}
	r.raw, r.digest = desc.Manifest, desc.Digest
	var images []v1.Image
	if desc.MediaType.IsIndex() {
		if r.index, err = desc.ImageIndex(); err != nil {
			r.err = err
			return r
		}
		im, err := r.index.IndexManifest()
		if err != nil {
			r.err = err
			return r
		}
		for _, m := range im.Manifests {
			if m.Platform == nil || (platform != "all" && m.Platform.OS+"/"+m.Platform.Architecture != platform) {
				continue
			}
			sub, err := r.index.Image(m.Digest)
			if err != nil {
				r.err = err
				return r
			}
			images = append(images, sub)
		}
		if len(images) == 0 {
			r.err = fmt.Errorf("no %s image in its index", platform)
			return r
		}
	} else {
		im, err := desc.Image()
		if err != nil {
			r.err = err
			return r
		}
		images = append(images, im)
	}
	var total int64
	for _, im := range images {
		m, err := im.Manifest()
		if err != nil {
			r.err = err
			return r
		}
		total += m.Config.Size
		for _, l := range m.Layers {
			total += l.Size
		}
	}
	p.start(img.ref, total)
	for _, im := range images {
		if _, err := im.RawConfigFile(); err != nil {
			r.err = err
			return r
		}
		layers, err := im.Layers()
		if err != nil {
			r.err = err
			return r
		}
		for _, l := range layers {
			rc, err := l.Compressed()
			if err != nil {
				r.err = err
				return r
			}
			n, err := io.Copy(p.writer(img.ref), rc)
			rc.Close()
			r.bytes += n
			if err != nil {
				r.err = err
				return r
			}
		}
	}
	r.imgs = images
	return r
}

func newPrefetch() *cobra.Command {
	var f cacheFlags
	var l listFlags
	cmd := &cobra.Command{
		Use:   "prefetch [REFERENCE...]",
		Short: "Pull a list of images into the caches, with progress",
		Long: `prefetch pulls every image of a list (arguments, --from FILE or -, --talos VERSION) into the
caches' storage: manifests, config and every layer. Interrupted and run again, it continues
with what is missing; a layer that was cut off is never stored or served.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			imgs, err := l.refs(cmd, args)
			if err != nil {
				return err
			}
			src, err := openSources(cmd, &f, imgs, cache.Online)
			if err != nil {
				return err
			}
			defer src.Close()
			p := newProgress(cmd.ErrOrStderr(), len(imgs))
			res := pullAll(cmd.Context(), src, imgs, l.platform, p)
			if src.damaged() > 0 {
				// A damaged blob is removed when found and fetched again on
				// the next request; a response it cut is retried once.
				var again []image
				var at []int
				for i, r := range res {
					if r.err != nil {
						again, at = append(again, r.img), append(at, i)
					}
				}
				if len(again) > 0 {
					redo := pullAll(cmd.Context(), src, again, l.platform, newProgress(cmd.ErrOrStderr(), len(again)))
					for j, i := range at {
						res[i] = redo[j]
					}
				}
			}
			var errs []error
			for _, r := range res {
				if r.err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", r.img.ref, r.err))
				}
			}
			t := src.total()
			out := cmd.OutOrStdout()
			for _, file := range src.log.files() {
				fmt.Fprintf(out, "repaired %s: its bytes did not match its digest; fetched again\n", file)
			}
			line := fmt.Sprintf("prefetched %d of %d images: %s from upstream, %s already cached", len(imgs)-len(errs), len(imgs),
				mb(t.UpstreamBytes), mb(max(0, t.ServedBytes-t.UpstreamBytes)))
			if t.Damaged > 0 {
				line += fmt.Sprintf(", %d damaged files fetched again", t.Damaged)
			}
			fmt.Fprintln(out, line+src.where())
			return errors.Join(errs...)
		},
	}
	f.register(cmd)
	l.register(cmd)
	return cmd
}

func newVerify() *cobra.Command {
	var f cacheFlags
	var l listFlags
	cmd := &cobra.Command{
		Use:   "verify [REFERENCE...]",
		Short: "Check that every image of a list is fully cached (exit 3 if not)",
		Long: `verify reads every image of a list from the caches' storage alone, as strict-mode caches
serve it (nothing is asked of any upstream): the index, the platform manifest, the config and
every layer, each digest checked. It lists what is missing and exits 3 if anything is.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			imgs, err := l.refs(cmd, args)
			if err != nil {
				return err
			}
			src, err := openSources(cmd, &f, imgs, cache.Strict)
			if err != nil {
				return err
			}
			defer src.Close()
			p := newProgress(io.Discard, len(imgs))
			res := pullAll(cmd.Context(), src, imgs, l.platform, p)
			missing := 0
			out := cmd.OutOrStdout()
			for _, file := range src.log.files() {
				fmt.Fprintf(out, "damaged  %s: its bytes do not match its digest; removed (`pullthrough prefetch` fetches it again)\n", file)
			}
			for _, r := range res {
				if r.err != nil {
					missing++
					fmt.Fprintf(out, "missing  %s: %v\n", r.img.ref, r.err)
					continue
				}
				fmt.Fprintf(out, "ok       %s (%s)\n", r.img.ref, mb(r.bytes))
			}
			if missing > 0 {
				return fmt.Errorf("%w: %d of %d images", errMissing, missing, len(imgs))
			}
			fmt.Fprintf(out, "all %d images are fully cached\n", len(imgs))
			return nil
		},
	}
	f.register(cmd)
	l.register(cmd)
	return cmd
}
