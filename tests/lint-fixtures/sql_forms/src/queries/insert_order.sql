-- Adds an order and returns its id.
INSERT INTO orders (customer, total) VALUES ($1, $2) RETURNING id
