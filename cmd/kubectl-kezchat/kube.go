package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// Labels the operator puts on every object it makes for a KezChat
// (controllers/names.go); they are part of immutable selectors, so they
// never change, and the plugin finds a KezChat's parts by them rather than
// by their names.
const (
	labelName      = "app.kubernetes.io/name"
	labelInstance  = "app.kubernetes.io/instance"
	labelComponent = "app.kubernetes.io/component"
	labelManagedBy = "app.kubernetes.io/managed-by"
	nameValue      = "kez-chat"
	managedByValue = "kez-chat-operator"
)

// Components of a KezChat, as their app.kubernetes.io/component label.
const (
	componentServer    = "server"
	componentSigServer = "sig-server"
	componentNATS      = "nats"
)

var components = []string{componentServer, componentSigServer, componentNATS}

// connection is kubectl's flags for reaching a cluster: --kubeconfig,
// --context, -n/--namespace, --server, --token and the rest, with
// kubectl's meaning.
type connection struct {
	loading   *clientcmd.ClientConfigLoadingRules
	overrides clientcmd.ConfigOverrides
}

// newFlagSet is a command's flags, the connection's among them.
func newFlagSet(name, args string, stderr io.Writer) (*pflag.FlagSet, *connection) {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &connection{loading: clientcmd.NewDefaultClientConfigLoadingRules()}
	kubectlFlags := pflag.NewFlagSet("kubectl", pflag.ContinueOnError)
	kubectlFlags.StringVar(&c.loading.ExplicitPath, "kubeconfig", "", "path to the kubeconfig file")
	clientcmd.BindOverrideFlags(&c.overrides, kubectlFlags, clientcmd.RecommendedConfigOverrideFlags(""))
	fs.AddFlagSet(kubectlFlags)
	fs.Usage = func() {
		// The command's own flags first, then kubectl's.
		own := pflag.NewFlagSet(name, pflag.ContinueOnError)
		fs.VisitAll(func(f *pflag.Flag) {
			if kubectlFlags.Lookup(f.Name) == nil {
				own.AddFlag(f)
			}
		})
		fmt.Fprintf(stderr, "Usage: kubectl kezchat %s %s\n", name, args)
		if own.HasFlags() {
			fmt.Fprintf(stderr, "\nFlags:\n%s", own.FlagUsages())
		}
		fmt.Fprintf(stderr, "\nkubectl's flags:\n%s", kubectlFlags.FlagUsages())
	}
	return fs, c
}

// kube is a connection made: clients and the namespace to work in.
type kube struct {
	config    *rest.Config
	client    client.Client // uncached: every read goes to the API server
	core      kubernetes.Interface
	namespace string
}

// scheme knows the built-in kinds and the KezChat API.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := chatv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}()

func (c *connection) connect() (*kube, error) {
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(c.loading, &c.overrides)
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, err
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, err
	}
	return newKube(cfg, ns)
}

func newKube(cfg *rest.Config, namespace string) (*kube, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.UserAgent == "" {
		cfg.UserAgent = "kubectl-kezchat/" + version
	}
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	core, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &kube{config: cfg, client: cl, core: core, namespace: namespace}, nil
}

// instanceSelector picks what the operator made for the KezChat name.
func instanceSelector(name string) client.MatchingLabels {
	return client.MatchingLabels{labelName: nameValue, labelInstance: name, labelManagedBy: managedByValue}
}

// validComponent refuses a component the operator does not make.
func validComponent(c string) error {
	for _, known := range components {
		if c == known {
			return nil
		}
	}
	return usagef("unknown component %q: one of server, sig-server, nats", c)
}

// parseFlags parses a command's flags; a bad flag is a usage error
// (exit status 2), --help is pflag.ErrHelp.
func parseFlags(fs *pflag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil || errors.Is(err, pflag.ErrHelp) {
		return err
	}
	return usageError{err.Error()}
}
