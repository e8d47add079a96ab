package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server/signing"
)

// groupConfig is what `kezchat-bench group` measures: group sends (one
// request storing one message for every member, POST /v1/batch) to members
// that all have a stream open, and attachment uploads and downloads.
type groupConfig struct {
	kezchat  string
	members  int
	sends    int
	senders  int
	msgSize  int
	blobs    int
	blobSize int
	timeout  time.Duration
}

const groupSynopsis = `kezchat-bench group: a message to a group of --members (default 100), every
member with a stream open: --sends group sends (POST /v1/batch, one signed
document per member, the sender's own sync copy included) from --senders
members at once (closed loop); requests/s and the delivery latency of every
copy. Then --blobs attachment uploads of --blob-size bytes, and their
downloads: MiB/s on loopback.`

// runGroupBench is `kezchat-bench group ...`.
func runGroupBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg groupConfig
	fs := newFlagSet(groupSynopsis, stderr)
	fs.StringVar(&cfg.kezchat, "kezchat", defaultKezchat(), "the kezchat binary the bench runs its server with")
	fs.IntVar(&cfg.members, "members", 100, "members of the group, each with a stream open")
	fs.IntVar(&cfg.sends, "sends", 500, "group sends in the closed loop")
	fs.IntVar(&cfg.senders, "senders", 4, "members sending at once (closed loop)")
	fs.IntVar(&cfg.msgSize, "msg-size", 100, "plaintext bytes per message")
	fs.IntVar(&cfg.blobs, "blobs", 8, "attachments uploaded, then downloaded (0 skips)")
	fs.IntVar(&cfg.blobSize, "blob-size", 25<<20, "bytes per attachment")
	fs.DurationVar(&cfg.timeout, "timeout", 10*time.Minute, "give up when the whole run takes longer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	case cfg.members < 2 || cfg.members > 256:
		return errors.New("--members must be 2 to 256")
	case cfg.sends < 1 || cfg.senders < 1 || cfg.senders > cfg.members:
		return errors.New("--sends must be at least 1, --senders 1 to --members")
	case cfg.msgSize < 0 || cfg.msgSize > 8<<10:
		return errors.New("--msg-size must be 0 to 8192")
	case cfg.blobs < 0 || cfg.blobSize < 1:
		return errors.New("--blobs must not be negative, --blob-size positive")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	tag, err := runTag()
	if err != nil {
		return err
	}
	p := &benchPrinter{w: stdout}
	// The server as the load phases run it (no rate limits, no quotas), with
	// room for every copy and attachment.
	target, err := startBenchServerWith(ctx, benchConfig{kezchat: cfg.kezchat, streams: cfg.members, senders: cfg.senders, inFlight: cfg.senders, messages: cfg.sends}, stderr, false,
		[]string{"--max-blob-bytes", fmt.Sprint(cfg.blobSize)})
	if err != nil {
		return err
	}
	hc := benchHTTPClient(cfg.senders + 4)
	defer func() {
		hc.CloseIdleConnections()
		target.stop(stderr)
	}()
	p.printf("kezchat-bench group: %s; %d CPUs, GOMAXPROCS %d, %s\n", target.describe(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())

	c := client.New(target.url, hc)
	domain, err := c.Domain(ctx)
	if err != nil {
		return err
	}
	var members []benchUser
	if err := p.step(fmt.Sprintf("registering %d members", cfg.members), func() (err error) {
		members, err = registerUsers(ctx, c, handles(tag, "m", cfg.members))
		return err
	}); err != nil {
		return err
	}
	group, err := runGroupSends(ctx, cfg, target, hc, domain, members, p)
	if err != nil {
		return err
	}
	var blobs *blobResult
	if cfg.blobs > 0 {
		if blobs, err = runBlobs(ctx, cfg, target, hc, domain, members[0], p); err != nil {
			return err
		}
	}

	fmt.Fprintln(stdout, "\nsummary")
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  metric\tresult")
	fmt.Fprintf(tw, "  group sends to %d members (%d senders, closed loop)\t%.0f requests/s (%.0f copies/s; %d in %s)\n",
		cfg.members, cfg.senders, group.rate, group.rate*float64(cfg.members), group.accepted, fmtDuration(group.wall))
	fmt.Fprintf(tw, "    POST p50 / p99\t%s / %s\n", fmtDuration(group.post.p50), fmtDuration(group.post.p99))
	fmt.Fprintf(tw, "    delivery of every copy p50 / p99 / max\t%s / %s / %s\n", fmtDuration(group.delivery.p50), fmtDuration(group.delivery.p99), fmtDuration(group.delivery.max))
	fmt.Fprintf(tw, "    copies missing / duplicate / out of order\t%d / %d / %d\n", group.missing, group.duplicates, group.outOfOrder)
	fmt.Fprintf(tw, "    server CPU per request\t%s\n", fmtDuration(time.Duration(group.serverCores*float64(time.Second)/max(group.rate, 1))))
	if blobs != nil {
		fmt.Fprintf(tw, "  attachment upload (%d x %.1f MiB)\t%.0f MiB/s\n", cfg.blobs, float64(cfg.blobSize)/(1<<20), blobs.uploadMiBs)
		fmt.Fprintf(tw, "  attachment download\t%.0f MiB/s\n", blobs.downloadMiBs)
	}
	tw.Flush()
	switch {
	case group.failed > 0:
		return fmt.Errorf("%d of %d group sends were refused", group.failed, group.sent)
	case !group.exactlyOnce():
		return fmt.Errorf("group copies were not delivered exactly once and in order: %d missing, %d duplicates, %d out of order, %d unexpected",
			group.missing, group.duplicates, group.outOfOrder, group.unexpected)
	}
	return nil
}

// runGroupSends opens a stream for every member, signs and encrypts every
// send before the timed phase, and posts them from cfg.senders members in a
// closed loop. Each copy's envelope id is <mid>:<member>, so the delivery
// log follows every copy on its own.
func runGroupSends(ctx context.Context, cfg groupConfig, target *benchTarget, hc *http.Client, domain string, members []benchUser, p *benchPrinter) (*loadResult, error) {
	var streams []*rawStream
	if err := p.step(fmt.Sprintf("opening %d streams", len(members)), func() (err error) {
		streams, err = openStreams(ctx, []*benchTarget{target}, domain, members, 16<<10)
		return err
	}); err != nil {
		return nil, err
	}
	var cur atomic.Pointer[deliveryLog]
	run := &loadRun{t: target, targets: []*benchTarget{target}, hc: hc, p: p}
	run.streams = streams
	cur.Store(newDeliveryLog(nil))
	for _, st := range streams {
		run.readers.Go(func() { st.follow(&cur) })
	}
	defer run.close()

	n := cfg.sends
	mids := newMessageIDs(n)
	copyIDs := make([]string, 0, n*len(members))
	for _, mid := range mids {
		for _, m := range members {
			copyIDs = append(copyIDs, mid+":"+m.id.Handle)
		}
	}
	log := newDeliveryLog(copyIDs)
	bodies := make([][]byte, n)
	auths := make([]string, n)
	text := strings.Repeat("benchmark ", cfg.msgSize/10+1)[:cfg.msgSize]
	signedAt := time.Now()
	err := p.step(fmt.Sprintf("signing and encrypting %d group sends of %d copies", n, len(members)), func() error {
		return forEachIndex(ctx, n, runtime.GOMAXPROCS(0), func(_ context.Context, i int) error {
			from := members[i%cfg.senders]
			var b bytes.Buffer
			b.WriteString(`{"messages":[`)
			for j, to := range members {
				doc, err := client.NewMessageAt(from.id, to.user, mids[i]+":"+to.id.Handle, text, signedAt)
				if err != nil {
					return err
				}
				raw, err := marshalSigned(doc)
				if err != nil {
					return err
				}
				if j > 0 {
					b.WriteByte(',')
				}
				b.Write(raw)
			}
			b.WriteString(`]}`)
			bodies[i] = b.Bytes()
			sum := sha256.Sum256(bodies[i])
			auth, err := signing.SignRequest(from.id.Signer, domain, http.MethodPost, "/v1/batch/"+from.id.Handle, signedAt.Unix(), "sha256="+signing.EncodeB64(sum[:]))
			auths[i] = auth
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	if age := time.Since(signedAt); age > maxMessageAge {
		return nil, fmt.Errorf("the sends were signed %s ago, too close to the server's 5 minute window; send fewer", age.Round(time.Second))
	}
	cur.Store(log)

	p.printf("sending %d group sends from %d members (closed loop) ... ", n, cfg.senders)
	cpu := startCPUMeter(target)
	var fail failureCounts
	post := make([]time.Duration, n)
	err = forEachIndex(ctx, n, cfg.senders, func(ctx context.Context, i int) error {
		start := log.now()
		for j := range members {
			log.sentAt[i*len(members)+j].Store(start)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, target.url+"/v1/batch/"+members[i%cfg.senders].id.Handle, bytes.NewReader(bodies[i]))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-KEZ-Auth", auths[i])
		resp, err := hc.Do(req)
		end := log.now()
		if err != nil {
			fail.add(err.Error(), 1)
			return nil
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			fail.add(fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(body[:min(len(body), 200)])), 1)
			return nil
		}
		post[i] = time.Duration(end - start)
		for j := range members {
			log.startedAt[i*len(members)+j] = start
			log.answeredAt[i*len(members)+j] = end
			log.accepted[i*len(members)+j] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	res := run.collect(ctx, log, cpu, &fail)
	// collect counts copies; the figures of this phase are per request.
	res.sent, res.accepted, res.failed = n, res.accepted/len(members), res.failed/len(members)
	var posts []time.Duration
	for _, d := range post {
		if d > 0 {
			posts = append(posts, d)
		}
	}
	res.post = summarize(posts)
	if res.wall > 0 {
		res.rate = float64(res.accepted) / res.wall.Seconds()
	}
	p.printf("  %.0f group sends/s; POST p50 %s p99 %s; delivery of every copy p50 %s p99 %s\n",
		res.rate, fmtDuration(res.post.p50), fmtDuration(res.post.p99), fmtDuration(res.delivery.p50), fmtDuration(res.delivery.p99))
	return res, nil
}

// blobResult is the attachment phase's throughput.
type blobResult struct {
	uploadMiBs, downloadMiBs float64
}

// runBlobs uploads cfg.blobs random blobs one after the other, then
// downloads each and checks it is byte-identical.
func runBlobs(ctx context.Context, cfg groupConfig, target *benchTarget, hc *http.Client, domain string, owner benchUser, p *benchPrinter) (*blobResult, error) {
	data := make([]byte, cfg.blobSize)
	if _, err := rand.Read(data); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	digest := signing.EncodeB64(sum[:])
	ids := make([]string, cfg.blobs)
	path := "/v1/blobs/" + owner.id.Handle
	var up, down time.Duration
	if err := p.step(fmt.Sprintf("uploading %d attachments of %d bytes", cfg.blobs, cfg.blobSize), func() error {
		for i := range ids {
			// Each upload signs afresh: the upload auth is accepted once.
			auth, err := signing.SignRequest(owner.id.Signer, domain, http.MethodPost, path, time.Now().Unix()+int64(i), "sha256="+digest)
			if err != nil {
				return err
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, target.url+path+"?sha256="+digest, bytes.NewReader(data))
			if err != nil {
				return err
			}
			req.Header.Set("Content-Type", "application/octet-stream")
			req.Header.Set("X-KEZ-Auth", auth)
			start := time.Now()
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
			resp.Body.Close()
			up += time.Since(start)
			if resp.StatusCode != http.StatusCreated {
				return fmt.Errorf("upload %d: %s %s", i, resp.Status, bytes.TrimSpace(body))
			}
			var ok struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(body, &ok); err != nil || ok.ID == "" {
				return fmt.Errorf("upload %d: answer %q", i, body)
			}
			ids[i] = ok.ID
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := p.step(fmt.Sprintf("downloading %d attachments", cfg.blobs), func() error {
		for i, id := range ids {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.url+"/v1/blobs/"+id, nil)
			if err != nil {
				return err
			}
			start := time.Now()
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			resp.Body.Close()
			down += time.Since(start)
			switch {
			case err != nil:
				return fmt.Errorf("download %d: %w", i, err)
			case resp.StatusCode != http.StatusOK:
				return fmt.Errorf("download %d: %s", i, resp.Status)
			case n != int64(len(data)) || !bytes.Equal(h.Sum(nil), sum[:]):
				return fmt.Errorf("download %d: %d bytes, not the %d uploaded", i, n, len(data))
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	mib := float64(cfg.blobs) * float64(cfg.blobSize) / (1 << 20)
	return &blobResult{uploadMiBs: mib / up.Seconds(), downloadMiBs: mib / down.Seconds()}, nil
}
