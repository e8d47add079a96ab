// Package s3 is a backup.ObjectStore on an S3-compatible object store
// (AWS S3, MinIO, Ceph RGW, versitygw, ...), through minio-go.
package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"kez.lat/chat/server/backup"
)

// Config says where the bucket is and how to reach it.
type Config struct {
	// Endpoint is https://host[:port], or http://host[:port] with
	// InsecureHTTP.
	Endpoint string
	Bucket   string
	// Region is the bucket's region (us-east-1 when empty).
	Region string
	// CAFile, when set, is a PEM bundle of the CAs trusted for Endpoint
	// instead of the system's.
	CAFile string
	// InsecureHTTP allows a plain http Endpoint: credentials and data then
	// cross the network in the clear.
	InsecureHTTP bool
	// AccessKeyID, SecretAccessKey and SessionToken sign requests;
	// CredentialsFromEnv fills them from AWS_ACCESS_KEY_ID,
	// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.
	AccessKeyID, SecretAccessKey, SessionToken string
}

// CredentialsFromEnv sets c's credentials from the environment variables
// AWS tools read, and fails when the key id or secret is missing.
func (c *Config) CredentialsFromEnv() error {
	c.AccessKeyID = os.Getenv("AWS_ACCESS_KEY_ID")
	c.SecretAccessKey = os.Getenv("AWS_SECRET_ACCESS_KEY")
	c.SessionToken = os.Getenv("AWS_SESSION_TOKEN")
	switch {
	case c.AccessKeyID == "" && c.SecretAccessKey == "":
		return errors.New("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	case c.AccessKeyID == "":
		return errors.New("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not")
	case c.SecretAccessKey == "":
		return errors.New("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
	}
	return nil
}

// Validate checks c without reaching the network.
func (c *Config) Validate() error {
	if c.Bucket == "" {
		return errors.New("--s3-bucket is required")
	}
	if c.Endpoint == "" {
		return errors.New("--s3-endpoint is required")
	}
	u, err := url.Parse(c.Endpoint)
	if err != nil {
		return fmt.Errorf("--s3-endpoint is not a URL: want https://host[:port]")
	}
	// Never echo credentials someone put in the URL.
	shown := c.Endpoint
	if u.User != nil {
		shown = u.Scheme + "://***@" + u.Host + u.Path
	}
	switch {
	case u.User != nil:
		return fmt.Errorf("--s3-endpoint %q: want only scheme, host and port; credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", shown)
	case u.Scheme == "http" && !c.InsecureHTTP:
		return fmt.Errorf("--s3-endpoint %q is plain http: credentials and backups would cross the network in the clear; use https, or pass --s3-insecure-http to allow it", shown)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("--s3-endpoint %q: want https://host[:port] or http://host[:port]", shown)
	case u.Host == "":
		return fmt.Errorf("--s3-endpoint %q has no host", shown)
	case u.Path != "" && u.Path != "/", u.RawQuery != "":
		return fmt.Errorf("--s3-endpoint %q: want only scheme, host and port; the bucket is --s3-bucket and the folder --s3-prefix", shown)
	case c.CAFile != "" && u.Scheme != "https":
		return fmt.Errorf("--s3-ca-file is for an https endpoint, not %q", shown)
	}
	return nil
}

// Store is a bucket of an S3-compatible service.
type Store struct {
	client   *minio.Client
	bucket   string
	endpoint string
}

var _ backup.ObjectStore = (*Store)(nil)

// partSize is the multipart upload's part when the size is unknown: minio-go
// would otherwise buffer parts sized for a 5 TiB object.
const partSize = 16 << 20

// New makes a Store for c; it checks c but does not reach the service (the
// first call does).
func New(c Config) (*Store, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	u, _ := url.Parse(c.Endpoint)
	region := c.Region
	if region == "" {
		region = "us-east-1"
	}
	transport, err := minio.DefaultTransport(u.Scheme == "https")
	if err != nil {
		return nil, fmt.Errorf("S3 transport: %w", err)
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--s3-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--s3-ca-file %s holds no PEM certificate", c.CAFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	client, err := minio.New(u.Host, &minio.Options{
		Creds:     credentials.NewStaticV4(c.AccessKeyID, c.SecretAccessKey, c.SessionToken),
		Secure:    u.Scheme == "https",
		Region:    region,
		Transport: transport,
		// Virtual-host style for AWS, whose newer regions expect it; path
		// style for every other endpoint, which works without a DNS name
		// per bucket.
		BucketLookup: minio.BucketLookupAuto,
	})
	if err != nil {
		return nil, fmt.Errorf("S3 client for %s: %w", c.Endpoint, err)
	}
	return &Store{client: client, bucket: c.Bucket, endpoint: u.Scheme + "://" + u.Host}, nil
}

func (s *Store) String() string { return "s3://" + s.bucket + " at " + s.endpoint }

// Put uploads r to key.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream"}
	if size < 0 {
		opts.PartSize = partSize
	}
	if _, err := s.client.PutObject(ctx, s.bucket, key, r, size, opts); err != nil {
		return fmt.Errorf("uploading s3://%s/%s: %w", s.bucket, key, err)
	}
	return nil
}

// Get opens key for reading.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	// GetObject's errors wait for the first read; Stat asks at once, so a
	// missing key is told apart here.
	obj, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err == nil {
		_, err = obj.Stat()
	}
	if err != nil {
		if obj != nil {
			obj.Close()
		}
		if minio.ToErrorResponse(err).StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("reading s3://%s/%s: %w", s.bucket, key, backup.ErrNotFound)
		}
		return nil, fmt.Errorf("reading s3://%s/%s: %w", s.bucket, key, err)
	}
	return obj, nil
}

// List lists every key under prefix.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	var keys []string
	for o := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			return nil, fmt.Errorf("listing s3://%s/%s: %w", s.bucket, prefix, o.Err)
		}
		if !strings.HasSuffix(o.Key, "/") { // a folder marker some tools make
			keys = append(keys, o.Key)
		}
	}
	return keys, nil
}

// Delete removes key.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.client.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{}); err != nil {
		if minio.ToErrorResponse(err).StatusCode == http.StatusNotFound {
			return nil
		}
		return fmt.Errorf("deleting s3://%s/%s: %w", s.bucket, key, err)
	}
	return nil
}
