package controllers

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// revisionHashLen is the longest hash the StatefulSet controller appends
// to its name in the controller-revision-hash label (a uint32, safely
// encoded).
const revisionHashLen = 10

// validNames reports why a KezChat named base would have an invalid child
// name or label, or nil.
func validNames(base string) error {
	kc := &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: base}}
	if errs := validation.IsValidLabelValue(base); len(errs) > 0 {
		return fmt.Errorf("label app.kubernetes.io/instance=%s: %v", base, errs)
	}
	for _, c := range namesOf(kc).all() {
		var errs []string
		switch c.kind {
		case subdomainName:
			errs = validation.IsDNS1123Subdomain(c.name)
		case serviceName:
			errs = validation.IsDNS1035Label(c.name)
		case statefulSetName:
			errs = append(validation.IsDNS1123Subdomain(c.name),
				validation.IsValidLabelValue(c.name+"-"+strings.Repeat("x", revisionHashLen))...)
			// Its pods are <name>-<ordinal>, host names too.
			errs = append(errs, validation.IsDNS1123Label(c.name+"-99")...)
		}
		if len(errs) > 0 {
			return fmt.Errorf("%s %s: %v", c.method, c.name, errs)
		}
	}
	return nil
}

// The longest KezChat name the CRD admits is the longest whose every child
// name and label is valid, as names.go makes them.
func TestMaxNameLengthFollowsTheChildNames(t *testing.T) {
	longest := 0
	for l := 1; l <= 253; l++ {
		if validNames(strings.Repeat("a", l)) != nil {
			break
		}
		longest = l
	}
	if longest != chatv1.MaxNameLength {
		t.Errorf("child names allow a KezChat name of up to %d characters; chatv1.MaxNameLength (and the CRD's rule) say %d",
			longest, chatv1.MaxNameLength)
	}
	if err := validNames(strings.Repeat("a", longest+1)); err == nil {
		t.Errorf("a name of %d characters is valid for every child", longest+1)
	}

	// Every names method is in all(), so none escapes the count above.
	file, err := parser.ParseFile(token.NewFileSet(), "names.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, c := range namesOf(&chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: "x"}}).all() {
		listed = append(listed, c.method)
	}
	for _, decl := range file.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Recv == nil || fn.Name.Name == "all" {
			continue
		}
		if id, ok := fn.Recv.List[0].Type.(*ast.Ident); ok && id.Name == "names" && !slices.Contains(listed, fn.Name.Name) {
			t.Errorf("names.%s is not in names.all(), so the longest KezChat name does not account for it", fn.Name.Name)
		}
	}
}
