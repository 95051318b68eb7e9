package controllers

import (
	"context"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// applier creates or updates owned children. Each child carries a hash of
// what the operator wants it to be: an unchanged spec means no write at
// all (no hot loop), and the operator only touches the fields it renders,
// leaving those that the API server or other controllers set.
type applier struct {
	client client.Client
	scheme *runtime.Scheme
}

// child is one object to apply: what copies the operator's fields onto
// the live object, and what tells whether someone changed them (the hash
// alone does not see an edit that left its annotation in place).
type child struct {
	obj    client.Object
	update func(existing, desired client.Object)
	same   func(existing, desired client.Object) bool
}

// apply makes c.obj exist, owned by owner.
func (a applier) apply(ctx context.Context, owner client.Object, c child) (controllerutil.OperationResult, error) {
	desired := c.obj
	raw, err := json.Marshal(desired)
	if err != nil {
		return controllerutil.OperationResultNone, err
	}
	want := hashOf(string(raw))
	setAnnotation(desired, specHashKey, want)
	if err := controllerutil.SetControllerReference(owner, desired, a.scheme); err != nil {
		return controllerutil.OperationResultNone, err
	}

	existing := desired.DeepCopyObject().(client.Object)
	err = a.client.Get(ctx, client.ObjectKeyFromObject(desired), existing)
	if apierrors.IsNotFound(err) {
		if err := a.client.Create(ctx, desired); err != nil {
			return controllerutil.OperationResultNone, fmt.Errorf("creating %s %s: %w", kindOf(desired, a.scheme), desired.GetName(), err)
		}
		return controllerutil.OperationResultCreated, nil
	}
	if err != nil {
		return controllerutil.OperationResultNone, err
	}
	if !metav1.IsControlledBy(existing, owner) {
		// Someone else's object of the same name: never taken over,
		// changed or deleted.
		return controllerutil.OperationResultNone, stalled(depproxyv1.ReasonNameTaken,
			"%s %s/%s exists and is not this resource's: remove or rename it, and the operator makes its own",
			kindOf(existing, a.scheme), existing.GetNamespace(), existing.GetName())
	}
	if existing.GetAnnotations()[specHashKey] == want && (c.same == nil || c.same(existing, desired)) {
		return controllerutil.OperationResultNone, nil
	}
	c.update(existing, desired)
	labels := existing.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	for k, v := range desired.GetLabels() {
		labels[k] = v
	}
	existing.SetLabels(labels)
	setAnnotation(existing, specHashKey, want)
	if err := a.client.Update(ctx, existing); err != nil {
		return controllerutil.OperationResultNone, fmt.Errorf("updating %s %s: %w", kindOf(existing, a.scheme), existing.GetName(), err)
	}
	return controllerutil.OperationResultUpdated, nil
}

// kindOf names an object's kind as kubectl does (Deployment), for events
// and errors.
func kindOf(obj runtime.Object, scheme *runtime.Scheme) string {
	if gvk, err := apiutil.GVKForObject(obj, scheme); err == nil {
		return gvk.Kind
	}
	return fmt.Sprintf("%T", obj)
}

func setAnnotation(obj metav1.Object, key, value string) {
	a := obj.GetAnnotations()
	if a == nil {
		a = map[string]string{}
	}
	a[key] = value
	obj.SetAnnotations(a)
}

// remove deletes a child the spec no longer asks for, if the owner
// controls it (anything else of that name is left alone); obj names it.
func (a applier) remove(ctx context.Context, owner client.Object, obj client.Object, opts ...client.DeleteOption) error {
	existing := obj.DeepCopyObject().(client.Object)
	err := a.client.Get(ctx, client.ObjectKeyFromObject(obj), existing)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !metav1.IsControlledBy(existing, owner) {
		return nil
	}
	if err := a.client.Delete(ctx, existing, opts...); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting %s %s: %w", kindOf(existing, a.scheme), existing.GetName(), err)
	}
	return nil
}
