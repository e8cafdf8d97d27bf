"""The service under test. It knows nothing of isolated_env: it takes an asyncpg-style connection,
a redis.asyncio client and a directory, exactly as it would in production."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    sku      text PRIMARY KEY,
    name     text NOT NULL,
    quantity integer NOT NULL CHECK (quantity >= 0)
);
CREATE TABLE IF NOT EXISTS reservations (
    id       serial PRIMARY KEY,
    sku      text NOT NULL REFERENCES products (sku),
    quantity integer NOT NULL CHECK (quantity > 0)
);
"""


class OutOfStock(Exception):
    pass


class UnknownProduct(KeyError):
    pass


class InventoryService:
    def __init__(self, db: Any, cache: Any, export_dir: Path, *, cache_ttl: int = 300) -> None:
        self.db = db
        self.cache = cache
        self.export_dir = Path(export_dir)
        self.cache_ttl = cache_ttl

    async def init_schema(self) -> None:
        await self.db.execute(SCHEMA)

    async def add_product(self, sku: str, name: str, quantity: int) -> None:
        await self.db.execute("INSERT INTO products (sku, name, quantity) VALUES ($1, $2, $3)", sku, name, quantity)

    async def stock(self, sku: str) -> int:
        cached = await self.cache.get(f"stock:{sku}")
        if cached is not None:
            return int(cached)
        quantity = await self.db.fetchval("SELECT quantity FROM products WHERE sku = $1", sku)
        if quantity is None:
            raise UnknownProduct(sku)
        await self.cache.set(f"stock:{sku}", quantity, ex=self.cache_ttl)
        return int(quantity)

    async def reserve(self, sku: str, quantity: int) -> int:
        async with self.db.transaction():
            left = await self.db.fetchval(
                "UPDATE products SET quantity = quantity - $2 WHERE sku = $1 AND quantity >= $2 RETURNING quantity",
                sku, quantity,
            )
            if left is None:
                if await self.db.fetchval("SELECT 1 FROM products WHERE sku = $1", sku) is None:
                    raise UnknownProduct(sku)
                raise OutOfStock(f"{sku}: fewer than {quantity} left")
            await self.db.execute("INSERT INTO reservations (sku, quantity) VALUES ($1, $2)", sku, quantity)
        await self.cache.delete(f"stock:{sku}")
        return int(left)

    async def export_csv(self, filename: str = "inventory.csv") -> Path:
        rows = await self.db.fetch("SELECT sku, name, quantity FROM products ORDER BY sku")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["sku", "name", "quantity"])
        writer.writerows((r["sku"], r["name"], r["quantity"]) for r in rows)
        self.export_dir.mkdir(parents=True, exist_ok=True)
        path = self.export_dir / filename
        path.write_text(buffer.getvalue())
        return path
