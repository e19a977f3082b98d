SELECT id, customer, total FROM orders WHERE id = $1
