// Package v1alpha1 holds the KezChat API, group chat.kez.lat, version
// v1alpha1: one resource describes one chat instance, which the operator
// in controllers/ turns into workloads.
//
// +kubebuilder:object:generate=true
// +groupName=chat.kez.lat
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of the objects in this package.
	GroupVersion = schema.GroupVersion{Group: "chat.kez.lat", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
