"""The seed architecture's producer, copied exactly as the seed document prints it ("Data Compression").

Kept byte for byte (hence the formatter and linter are off for this file): the seed pipeline's test
puts records with it. The document imports boto3 in an earlier block; it is imported here first.
"""

# fmt: off
import boto3

# Compress data before sending to Kinesis
import gzip
import json

def compress_and_send_data(stream_name, data):
    """
    Compress data and send to Kinesis
    """
    kinesis = boto3.client('kinesis')
    
    # Compress data
    compressed_data = gzip.compress(
        json.dumps(data).encode('utf-8')
    )
    
    # Send to Kinesis
    response = kinesis.put_record(
        StreamName=stream_name,
        Data=compressed_data,
        PartitionKey=data['partition_key']
    )
    
    return response
