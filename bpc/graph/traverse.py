"""Walking and rebuilding graphs."""


def topo_sort(outputs):
    """All nodes the outputs depend on, each after its inputs (iterative, so
    deep graphs do not hit Python's recursion limit)."""
    order, seen = [], set()
    for root in outputs:
        if root.id in seen:
            continue
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if node.id in seen:
                continue
            seen.add(node.id)
            stack.append((node, True))
            for inp in reversed(node.inputs):
                if inp.id not in seen:
                    stack.append((inp, False))
    return order


def rebuild(outputs, rewrite):
    """Rebuild the graph bottom-up. `rewrite(node, new_inputs)` returns the
    node that replaces `node` given its already-rebuilt inputs (return `node`
    itself to keep it). Returns the list of rebuilt outputs and the mapping
    from old node ids to new nodes."""
    mapping = {}
    for node in topo_sort(outputs):
        new_inputs = tuple(mapping[i.id] for i in node.inputs)
        mapping[node.id] = rewrite(node, new_inputs)
    return [mapping[o.id] for o in outputs], mapping


def consumers(order):
    """Map node id -> list of nodes that use it (with multiplicity)."""
    users = {n.id: [] for n in order}
    for n in order:
        for i in n.inputs:
            users[i.id].append(n)
    return users
